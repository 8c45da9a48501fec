"""qw: run a spec's task list as parallel, supervised, headless Claude Code sessions."""

__version__ = "0.1.0"
