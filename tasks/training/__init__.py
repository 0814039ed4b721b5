"""The retrain flow's units of work: labelled videos in, an evaluated, published model out."""
