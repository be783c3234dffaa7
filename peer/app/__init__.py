"""The application: the command line, the local demo, process launch, status views."""
