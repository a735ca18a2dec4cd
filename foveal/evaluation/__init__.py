"""Score model predictions against dataset labels and write the evaluation report."""
