"""web: the local web app."""
