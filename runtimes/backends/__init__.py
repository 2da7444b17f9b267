"""Runtime backends behind one small interface."""
