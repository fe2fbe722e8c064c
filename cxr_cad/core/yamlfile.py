"""YAML for config and workflow files, with limits: document size, alias expansion, nesting.

``yaml.safe_load`` refuses to build arbitrary objects but not a billion-laughs document:
nine lines of anchors whose aliases expand to 9**9 strings when anything walks the result
(``expand_env``, ``copy.deepcopy``, a ``repr`` in an error message). :func:`load_yaml_text`
composes the node graph first, counts the nodes it stands for with every alias expanded
(each shared node counted once per use, in linear time), and refuses documents above
:data:`MAX_EXPANDED_NODES`, recursive aliases and nesting deeper than
:data:`MAX_DEPTH`, before constructing any Python object.

Hand-written: PyYAML has no alias or size limit (ruamel.yaml neither).
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from cxr_cad.core.files import MAX_TEXT_FILE_BYTES, read_text_limited
from cxr_cad.errors import ConfigError

#: Nodes a document may stand for once every alias is expanded (real workflows: a few hundred).
MAX_EXPANDED_NODES = 100_000
#: Deepest nesting of mappings/sequences accepted.
MAX_DEPTH = 64


def _expanded_size(root: yaml.Node, source: str) -> int:
    """Nodes ``root`` stands for with aliases expanded; raises ConfigError beyond the limits."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if depth > MAX_DEPTH:
            raise ConfigError(
                [f"YAML nesting is deeper than {MAX_DEPTH} levels; no config or workflow needs that"], source
            )
        if key in active:
            raise ConfigError(["a YAML alias refers to its own anchor (a recursive structure)"], source)
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child, depth + 1)
                if total > MAX_EXPANDED_NODES:
                    break
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k, depth + 1) + size(v, depth + 1)
                if total > MAX_EXPANDED_NODES:
                    break
        active.discard(key)
        if total > MAX_EXPANDED_NODES:
            raise ConfigError(
                [
                    f"the YAML aliases (*name) expand to more than {MAX_EXPANDED_NODES:,} values "
                    "(an alias bomb); write the values out, or use fewer aliases"
                ],
                source,
            )
        sizes[key] = total
        return total

    return size(root, 0)


def load_yaml_text(text: str, source: str) -> Any:
    """``yaml.safe_load(text)`` within the module's limits (None for an empty document).

    Raises:
        ConfigError: not valid YAML, more than one document, or beyond a limit.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], source) from None
    except RecursionError:
        raise ConfigError(
            [f"YAML nesting is deeper than {MAX_DEPTH} levels; no config or workflow needs that"], source
        ) from None
    finally:
        loader.dispose()


def read_yaml_file(path: str | os.PathLike, *, what: str, limit: int = MAX_TEXT_FILE_BYTES) -> Any:
    """Read a UTF-8 YAML file of at most ``limit`` bytes from a regular file, within the limits.

    Raises:
        ConfigError (exit 2, one line): cannot be read, not a regular file, too large, not
            UTF-8, not valid YAML, or beyond the alias/nesting limits.
    """
    source = str(path)
    try:
        text = read_text_limited(path, limit)
    except OSError as exc:
        raise ConfigError([f"cannot read the {what}: {exc.strerror or exc}"], source) from None
    except ValueError as exc:
        raise ConfigError([f"cannot read the {what}: {exc}"], source) from None
    return load_yaml_text(text, source)
