"""Training, cross-validation and batch inference. No plotting, no argparse."""
