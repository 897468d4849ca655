"""Code that the maillab services share: the forward-file format and settings parsing."""
