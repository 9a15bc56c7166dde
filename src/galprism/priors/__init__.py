"""The built-in priors: the shipped prior folders (``builtin/``) and their catalogue."""
