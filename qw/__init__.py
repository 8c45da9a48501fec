"""qw: run a spec's task list as parallel, supervised, headless Claude Code sessions."""

import os

__version__ = "0.1.0"

# The sys.path entry this qw comes from: a checkout's folder, qw.pyz itself (zipimport reads
# it), or the code cache's compiled copy of qw.pyz (qw.codecache).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
