"""Tools: the demo job and the speed/memory benchmark."""
