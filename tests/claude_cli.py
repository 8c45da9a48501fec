"""Find the real Claude Code CLI for tests and build the environment that keeps it offline.

Tests that drive the real CLI call find_claude() and skip (or fail, under
QW_REQUIRE_CLAUDE=1) when it returns None; fake_api_env() points the CLI at a FakeAnthropic
server and gives it its own config directory so no test touches the user's ~/.claude.
"""
from __future__ import annotations

import os
import shutil
from typing import Dict, Mapping, Optional

# Where the CI installs the pinned version (npm install --prefix this @anthropic-ai/claude-code).
CACHED_CLI = os.path.expanduser("~/.cache/qw-ci/claude-2.1.197/node_modules/.bin/claude")
MISSING_REASON = ("the real claude CLI was not found: set QW_TEST_CLAUDE, install it at %s "
                  "or put claude on PATH" % CACHED_CLI)


def find_claude() -> Optional[str]:
    """The CLI to test with: $QW_TEST_CLAUDE, else the CI cache, else claude on PATH."""
    chosen = os.environ.get("QW_TEST_CLAUDE")
    if chosen:
        return chosen if os.access(chosen, os.X_OK) else None
    if os.access(CACHED_CLI, os.X_OK):
        return CACHED_CLI
    return shutil.which("claude")


def claude_required() -> bool:
    """True when a missing CLI must fail the tests instead of skipping them."""
    return os.environ.get("QW_REQUIRE_CLAUDE") == "1"


def fake_api_env(base_url: str, config_dir: str, extra: Optional[Mapping[str, str]] = None,
                 subscription: bool = False) -> Dict[str, str]:
    """os.environ plus what makes the CLI talk only to base_url and keep state in config_dir.

    Inherited credentials and API settings are dropped first, so a developer's own login can
    neither leak into nor change a test run. subscription=True logs in with a fake OAuth
    token instead of an API key: the CLI then acts as a Pro/Max account, reads the
    anthropic-ratelimit-unified-* headers and words usage limits as subscribers see them.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "CLAUDE_CODE_", "CLAUDECODE"))}
    env.update({
        "ANTHROPIC_BASE_URL": base_url,
        "CLAUDE_CONFIG_DIR": config_dir,
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
    })
    if subscription:
        env["CLAUDE_CODE_OAUTH_TOKEN"] = "sk-ant-oat01-test"
    else:
        env["ANTHROPIC_API_KEY"] = "sk-ant-test"
    env.update(extra or {})
    return env


def claude_or_skip() -> str:
    """The CLI's path, else skip the test (fail when QW_REQUIRE_CLAUDE=1 says it must run)."""
    import pytest

    path = find_claude()
    if path is None:
        if claude_required():
            pytest.fail(MISSING_REASON)
        pytest.skip(MISSING_REASON)
    return path
