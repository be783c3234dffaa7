"""The version store: every merged version as a commit on disk, with its state file."""
