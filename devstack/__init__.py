"""Local process supervision for development and tests: embedded servers and `make run`."""
