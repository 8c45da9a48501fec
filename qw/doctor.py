"""`qw doctor`: can qw run here? One check per line, with what to do when one fails.

Nothing here spends money: the credential check only looks for a key or the CLI's own
login files; it never calls the API.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import List, Mapping, Optional

from qw.errors import QwError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def find_claude(command: str, env: Mapping[str, str]) -> Optional[str]:
    """The claude executable qw would run: a path, or a name looked up on PATH."""
    if os.path.dirname(command):
        return command if os.path.isfile(command) else None
    return shutil.which(command, path=env.get("PATH"))


def run_checks(repo: str, config_file: Optional[str] = None,
               env: Optional[Mapping[str, str]] = None) -> List[Check]:
    from qw.config import load_config

    env = os.environ if env is None else env
    checks: List[Check] = []
    config = None
    try:
        config = load_config(repo, config_file=config_file, env=env)
        checks.append(Check("config", True, _config_source(repo, config_file)))
    except QwError as e:
        checks.append(Check("config", False, str(e), "fix the file or variable it names"))

    command = config.claude.command if config else env.get("QW_CLAUDE", "claude")
    checks.append(_check_claude(command, env))
    checks.append(_check_credentials(env))
    checks.append(_check_git())
    checks.append(Check("python", sys.version_info >= (3, 9),
                        f"{platform.python_implementation()} {platform.python_version()} "
                        f"({sys.executable})", "use Python 3.9 or newer"))
    checks.append(_check_psutil())
    checks.append(_check_writable(os.path.join(repo, ".qw")))
    return checks


def _config_source(repo: str, config_file: Optional[str]) -> str:
    if config_file:
        return f"valid ({config_file})"
    for rel in ("qw.toml", os.path.join(".claude", "qw.toml")):
        if os.path.exists(os.path.join(repo, rel)):
            return f"valid ({rel})"
    return "defaults (no qw.toml)"


def _check_claude(command: str, env: Mapping[str, str]) -> Check:
    path = find_claude(command, env)
    if path is None:
        return Check("claude CLI", False, f"'{command}' not found",
                     "install it (npm install -g @anthropic-ai/claude-code), or set "
                     "[claude] command / QW_CLAUDE to its path")
    try:
        done = subprocess.run([path, "--version"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=30,
                              env={**env, "DISABLE_AUTOUPDATER": "1"})
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check("claude CLI", False, f"{path} did not answer --version: {e}",
                     "reinstall the Claude Code CLI")
    text = done.stdout.decode("utf-8", "replace").strip().splitlines()
    if done.returncode != 0 or not text:
        return Check("claude CLI", False, f"{path} --version exited {done.returncode}",
                     "reinstall the Claude Code CLI")
    return Check("claude CLI", True, f"{text[0]} ({path})")


def _check_credentials(env: Mapping[str, str]) -> Check:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"):
        if env.get(name):
            return Check("credentials", True, f"{name} is set")
    if env.get("CLAUDE_CODE_USE_BEDROCK") or env.get("CLAUDE_CODE_USE_VERTEX"):
        return Check("credentials", True, "a cloud provider (Bedrock/Vertex) is configured")
    config_dir = env.get("CLAUDE_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".claude")
    if os.path.exists(os.path.join(config_dir, ".credentials.json")):
        return Check("credentials", True, f"the CLI's login ({config_dir}/.credentials.json)")
    if sys.platform == "darwin":
        return Check("credentials", True, "no key in the environment; the CLI's login may be "
                     "in the macOS keychain (not checked)", required=False)
    return Check("credentials", False, "no ANTHROPIC_API_KEY and no CLI login found",
                 "set ANTHROPIC_API_KEY, or run `claude` once and /login")


def _check_git() -> Check:
    path = shutil.which("git")
    if path is None:
        return Check("git", False, "not found", "install git (qw works without it, but "
                     "reviewing what children changed is harder)", required=False)
    try:
        done = subprocess.run([path, "--version"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, timeout=10)
        return Check("git", True, done.stdout.decode().strip(), required=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check("git", False, str(e), "reinstall git", required=False)


def _check_psutil() -> Check:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return Check("psutil", True, "not available: standard-library process probes",
                     required=False)
    return Check("psutil", True, f"psutil {psutil.__version__}", required=False)


def _check_writable(qw_dir: str) -> Check:
    try:
        os.makedirs(qw_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=qw_dir, prefix=".doctor-"):
            pass
    except OSError as e:
        return Check(".qw/", False, f"{qw_dir} is not writable: {e.strerror or e}",
                     "make the repository writable, or run qw as its owner")
    return Check(".qw/", True, f"{qw_dir} is writable")
