"""Classification metrics on labelled predictions (paper A's definitions, defined once)
and the rolling labelled window."""
