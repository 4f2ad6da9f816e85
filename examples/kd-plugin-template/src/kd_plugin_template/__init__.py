"""A template kd plugin: a hidden-state loss and a projection, registered through kd's hooks."""
