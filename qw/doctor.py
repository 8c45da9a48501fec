"""`qw doctor`: can qw run here? One check per line, with what to do when one fails.

Nothing here spends money. The credential check asks the CLI itself (`claude auth status
--json`, which only reads its own login and the environment; verified with 2.1.197: its one
network call is a `HEAD /` reachability probe) in the environment a task's child would get;
an older CLI without that command gets a look for a key or the CLI's login file instead.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import List, Mapping, Optional

from qw.errors import QwError

CLI_TIMEOUT_S = 30   # `claude --version` and `claude auth status` answer in about a second
KEY_VARIABLES = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")
CLOUD_VARIABLES = ("CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX",
                   "CLAUDE_CODE_USE_FOUNDRY")
LOGIN_FIX = ("set ANTHROPIC_API_KEY (or put it in [claude] env), or log the CLI in: "
             "run `claude` once and type /login")


@dataclass(frozen=True)
class Check:
    """One line of the report. A failed `required` check makes `qw doctor` exit 1."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def find_claude(command: str, env: Mapping[str, str], repo: str = ".") -> Optional[str]:
    """The claude executable qw would run: a path (relative ones from the repository, as
    children start there), or a name looked up on PATH; None if there is none."""
    if os.path.dirname(command):
        path = os.path.join(repo, os.path.expanduser(command))
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    return shutil.which(command, path=env.get("PATH", os.defpath))


def run_checks(repo: str, config_file: Optional[str] = None,
               env: Optional[Mapping[str, str]] = None) -> List[Check]:
    """Every check, in the order they are shown. `env` defaults to os.environ."""
    from qw.claude import build_env
    from qw.config import load_config

    env = os.environ if env is None else env
    checks: List[Check] = []
    try:
        config = load_config(repo, config_file=config_file, env=env)
    except QwError as e:
        config = None
        where = f", {e.where}" if e.where else ""
        checks.append(Check("config", False, e.what + where,
                            e.fix or "fix the file or variable it names"))
    else:
        checks.append(Check("config", True, _config_source(repo, config_file)))

    if config is not None:
        command, source = config.claude.command, config.sources["claude.command"]
        # The environment a task's child gets: the [claude] env table may hold the key.
        child_env = build_env(env, config.claude, run_id="doctor", task_id="doctor",
                              attempt=0)
    else:
        command = env.get("QW_CLAUDE") or "claude"
        source = "env QW_CLAUDE" if env.get("QW_CLAUDE") else "default"
        child_env = dict(env)
    path = find_claude(command, env, repo)
    checks.append(_check_claude(command, source, path, child_env))
    checks.append(_check_credentials(path, child_env, repo))
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


def _check_claude(command: str, source: str, path: Optional[str],
                  env: Mapping[str, str]) -> Check:
    origin = "from PATH" if source == "default" else f"from {source}"
    if path is None:
        return Check("claude CLI", False, f"'{command}' ({origin}) not found",
                     "install it (npm install -g @anthropic-ai/claude-code), or set "
                     "[claude] command in qw.toml or QW_CLAUDE to its path")
    done = _run_cli([path, "--version"], env)
    if isinstance(done, str):
        return Check("claude CLI", False, f"{path} did not answer --version: {done}",
                     "reinstall the Claude Code CLI")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return Check("claude CLI", False, f"{path} --version exited {done.returncode}",
                     "reinstall the Claude Code CLI")
    return Check("claude CLI", True, f"{lines[0]} at {path} ({origin})")


def _check_credentials(claude: Optional[str], env: Mapping[str, str], repo: str) -> Check:
    status = _auth_status(claude, env, repo) if claude else None
    if status is None:
        return _look_for_credentials(env)
    if not status.get("loggedIn"):
        return Check("credentials", False, "the claude CLI is not logged in and has no "
                     "API key (claude auth status)", LOGIN_FIX)
    method = str(status.get("authMethod") or "unknown")
    if status.get("apiKeySource"):
        how = f"API key from {status['apiKeySource']}"
    elif method == "claude.ai":
        plan = status.get("subscriptionType")
        how = "claude.ai login" + (f" ({plan} plan)" if plan else "")
    else:
        how = method.replace("_", " ")
    provider = status.get("apiProvider")
    if provider and provider != "firstParty":
        how += f" via {provider}"
    return Check("credentials", True, how)


def _auth_status(claude: str, env: Mapping[str, str], repo: str) -> Optional[dict]:
    """What `claude auth status --json` says, or None if this CLI cannot tell."""
    done = _run_cli([claude, "auth", "status", "--json"], env, cwd=repo)
    if isinstance(done, str):
        return None
    try:
        status = json.loads(done.stdout)
    except ValueError:
        return None
    return status if isinstance(status, dict) and "loggedIn" in status else None


def _look_for_credentials(env: Mapping[str, str]) -> Check:
    """The fallback for CLIs without `auth status`: a key, a cloud provider, a login file."""
    for name in KEY_VARIABLES:
        if env.get(name):
            return Check("credentials", True, f"{name} is set")
    for name in CLOUD_VARIABLES:
        if env.get(name):
            return Check("credentials", True, f"{name} is set (a cloud provider's own "
                         "credentials are not checked)")
    config_dir = env.get("CLAUDE_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".claude")
    login = os.path.join(config_dir, ".credentials.json")
    if os.path.exists(login):
        return Check("credentials", True, f"the CLI's login ({login})")
    if sys.platform == "darwin":
        return Check("credentials", True, "no key in the environment; the CLI's login may be "
                     "in the macOS keychain (not checked)", required=False)
    return Check("credentials", False, "no ANTHROPIC_API_KEY and no CLI login found", LOGIN_FIX)


def _run_cli(argv: List[str], env: Mapping[str, str], cwd: Optional[str] = None):
    """The finished process (text output), or a string saying why it could not run."""
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=CLI_TIMEOUT_S, cwd=cwd,
                              env={**env, "DISABLE_AUTOUPDATER": "1"},
                              universal_newlines=True, errors="replace")
    except subprocess.TimeoutExpired:
        return f"no answer within {CLI_TIMEOUT_S}s"
    except OSError as e:
        return e.strerror or str(e)


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
    from qw import vendor

    backend, note = vendor.status()
    if backend == "psutil":
        return Check("psutil", True, note, required=False)
    return Check("psutil", True, f"standard-library process probes ({note})", required=False)


def _check_writable(qw_dir: str) -> Check:
    if os.path.exists(qw_dir) and not os.path.isdir(qw_dir):
        return Check(".qw/", False, f"{qw_dir} is a file, not a folder",
                     "move that file away: qw keeps its state, runs and locks in .qw/")
    try:
        os.makedirs(qw_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=qw_dir, prefix=".doctor-"):
            pass
    except OSError as e:
        return Check(".qw/", False, f"{qw_dir} is not writable: {e.strerror or e}",
                     "make the repository writable, or run qw as its owner")
    return Check(".qw/", True, f"{qw_dir} is writable")
