"""The torch-free on-device runtime: bundle reader, planner, backends."""
