"""qw's configuration: built-in defaults ◄ qw.toml ◄ environment ◄ command-line flags (DESIGN §4).

Pure apart from reading the one config file: the environment and the flags come in as
arguments. `load_config` returns a frozen `Config` whose `sources` say where every effective
value came from, or raises ConfigError naming the key, and the file and line (or the
environment variable, or the flag) it came from.

`KEYS` is the single table of keys, types, defaults and limits: validation, environment
parsing, `describe` and the test of config.example.toml all read it. A new key is added to
DESIGN §4, then to `KEYS`, its section's dataclass and config.example.toml.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

from qw.durations import parse_duration
from qw.errors import ConfigError

# Value kinds. Each has one converter in `_convert`.
INT = "int"
FLOAT = "float"
DURATION = "duration"    # stored as float seconds
STR = "str"
BOOL = "bool"
CHOICE = "choice"        # one of `Key.choices`, matched case-insensitively
STR_LIST = "str_list"    # stored as a tuple of str (the dataclasses are frozen)
STR_TABLE = "str_table"  # stored as a dict of str -> str


@dataclass(frozen=True)
class Key:
    """One config key: its kind, its default as a user would write it, and its limits."""

    section: str
    name: str
    kind: str
    default: object
    low: Optional[float] = None    # smallest allowed value (seconds for durations)
    high: Optional[float] = None   # largest allowed value
    choices: Tuple[str, ...] = ()

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env_var(self) -> str:
        return f"QW_{self.section}_{self.name}".upper()


PERMISSION_MODES = ("acceptEdits", "auto", "bypassPermissions", "default", "dontAsk", "plan")

KEYS: Tuple[Key, ...] = (
    Key("run", "max_concurrent", INT, 8, low=1),
    # A timeout of zero would kill every child at once; "no limit" is a large value.
    Key("run", "timeout", DURATION, "30m", low=1),
    Key("run", "idle_timeout", DURATION, "10m", low=1),
    Key("run", "max_retries", INT, 2, low=0),
    Key("run", "retry_backoff", DURATION, "30s", low=0),
    Key("run", "timeout_multiplier", FLOAT, 2.0, low=1),
    Key("run", "max_pause", DURATION, "6h", low=0),
    Key("run", "budget_usd", FLOAT, 0.0, low=0),
    Key("run", "verify", STR, ""),
    Key("run", "verify_timeout", DURATION, "10m", low=1),
    Key("plan", "dependencies", CHOICE, "infer", choices=("infer", "explicit", "sequential")),
    Key("plan", "undeclared", CHOICE, "serial", choices=("serial", "parallel")),
    Key("claude", "command", STR, "claude"),
    Key("claude", "model", STR, ""),
    Key("claude", "permission_mode", CHOICE, "acceptEdits", choices=PERMISSION_MODES),
    Key("claude", "allowed_tools", STR_LIST, ()),
    Key("claude", "disallowed_tools", STR_LIST, ()),
    Key("claude", "max_turns", INT, 0, low=0),
    Key("claude", "append_system_prompt", STR, ""),
    Key("claude", "extra_args", STR_LIST, ()),
    Key("claude", "env", STR_TABLE, {}),
    Key("resources", "cpu_limit_percent", INT, 80, low=1, high=100),
    Key("resources", "memory_limit_percent", INT, 75, low=1, high=100),
    Key("resources", "memory_reserve_mb", INT, 1024, low=0),
    Key("resources", "per_task_memory_mb", INT, 512, low=0),
    Key("spec", "mark_in_progress", BOOL, False),
    Key("logging", "level", CHOICE, "info", choices=("debug", "info", "warning", "error")),
    Key("workflow", "auto_progression", BOOL, False),
    Key("workflow", "test_command", STR, ""),
)

KEYS_BY_DOTTED: Dict[str, Key] = {k.dotted: k for k in KEYS}
SECTIONS: Tuple[str, ...] = tuple(dict.fromkeys(k.section for k in KEYS))


@dataclass(frozen=True)
class RunConfig:
    """[run]: the pool, timeouts and retries. Durations in seconds; budget 0 = none."""

    max_concurrent: int
    timeout: float
    idle_timeout: float
    max_retries: int
    retry_backoff: float
    timeout_multiplier: float
    max_pause: float
    budget_usd: float
    verify: str                    # "" = none; a task's _Verify: line wins
    verify_timeout: float


@dataclass(frozen=True)
class PlanConfig:
    """[plan]: how the task graph's edges are found."""

    dependencies: str
    undeclared: str


@dataclass(frozen=True)
class ClaudeConfig:
    """[claude]: how each `claude -p` child is started. max_turns 0 = none."""

    command: str                   # one executable path or name, never split
    model: str
    permission_mode: str
    allowed_tools: Tuple[str, ...]
    disallowed_tools: Tuple[str, ...]
    max_turns: int
    append_system_prompt: str
    extra_args: Tuple[str, ...]
    env: Dict[str, str]


@dataclass(frozen=True)
class ResourcesConfig:
    """[resources]: when the machine is too busy to start another child."""

    cpu_limit_percent: int
    memory_limit_percent: int
    memory_reserve_mb: int
    per_task_memory_mb: int


@dataclass(frozen=True)
class SpecConfig:
    """[spec]: how qw writes tasks.md."""

    mark_in_progress: bool


@dataclass(frozen=True)
class LoggingConfig:
    """[logging]"""

    level: str


@dataclass(frozen=True)
class WorkflowConfig:
    """[workflow]"""

    auto_progression: bool
    test_command: str


@dataclass(frozen=True)
class Config:
    """The effective configuration. `sources["run.timeout"]` is "default", "qw.toml:12",
    "env QW_RUN_TIMEOUT" or "flag --timeout"."""

    run: RunConfig
    plan: PlanConfig
    claude: ClaudeConfig
    resources: ResourcesConfig
    spec: SpecConfig
    logging: LoggingConfig
    workflow: WorkflowConfig
    sources: Dict[str, str]


_SECTION_CLASSES = {
    "run": RunConfig, "plan": PlanConfig, "claude": ClaudeConfig,
    "resources": ResourcesConfig, "spec": SpecConfig, "logging": LoggingConfig,
    "workflow": WorkflowConfig,
}

# Environment names besides QW_<SECTION>_<KEY>, lowest priority first: the original
# Quantumwala names, then qw's short forms; the full QW_<SECTION>_<KEY> names beat both.
_QUANTUMWALA_VARS: Tuple[Tuple[str, str], ...] = (
    ("QUANTUMWALA_MAX_CONCURRENT", "run.max_concurrent"),
    ("QUANTUMWALA_CPU_LIMIT", "resources.cpu_limit_percent"),
    ("QUANTUMWALA_MEMORY_LIMIT", "resources.memory_limit_percent"),
    ("QUANTUMWALA_MEMORY_RESERVE", "resources.memory_reserve_mb"),
    ("QUANTUMWALA_TIMEOUT_DEFAULT", "run.timeout"),
    ("QUANTUMWALA_TIMEOUT_AGENT", "run.timeout"),   # after DEFAULT: it wins when both are set
    ("QUANTUMWALA_RETRY_MAX", "run.max_retries"),
    ("QUANTUMWALA_LOG_LEVEL", "logging.level"),
)
_SHORT_VARS: Tuple[Tuple[str, str], ...] = (
    ("QW_MAX_CONCURRENT", "run.max_concurrent"),
    ("QW_CLAUDE", "claude.command"),
)
# QW_ variables that are not config keys although QW_RUN_ID looks like [run] id.
_MARKER_VARS = frozenset({"QW_RUN_ID", "QW_TASK_ID"})
_FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})

# Flags whose names are not `--<key with dashes>`.
_FLAG_NAMES = {
    "run.max_concurrent": "-j/--jobs",
    "run.timeout": "--timeout",
    "run.idle_timeout": "--idle-timeout",
    "run.max_retries": "--retries",
}

_CONFIG_NAMES = ("qw.toml", ".claude/qw.toml")


class _Invalid(Exception):
    """A value that does not fit its key. `problem` completes "[run] timeout ..."."""

    def __init__(self, problem: str, fix: Optional[str]):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


def default_config() -> Config:
    """The built-in defaults, every source "default"."""
    return _build(*_defaults())


def load_config(repo: str, config_file: Optional[str] = None,
                env: Optional[Mapping[str, str]] = None,
                flags: Optional[Mapping[str, object]] = None) -> Config:
    """The effective configuration of `repo`: defaults ◄ file ◄ `env` ◄ `flags`.

    The file is `config_file` if given (opened as given, relative to the working directory),
    else `<repo>/qw.toml`, else `<repo>/.claude/qw.toml`; none is fine. `env` defaults to
    os.environ. `flags` maps "section.key" to a typed value or a string as typed; None means
    the flag was not given. Raises ConfigError naming the key and where it came from.
    """
    values, sources = _defaults()
    found = _find_file(repo, config_file)
    if found is not None:
        _apply_file(found[0], found[1], values, sources)
    _apply_env(os.environ if env is None else env, values, sources)
    _apply_flags(flags or {}, values, sources)
    return _build(values, sources)


def describe(config: Config) -> List[Tuple[str, object, str]]:
    """("section.key", value, source) for every key in `KEYS` order, for `qw config`.

    Durations are given as a user would write them ("30m"), lists as lists.
    """
    rows = []
    for key in KEYS:
        value = getattr(getattr(config, key.section), key.name)
        if key.kind == DURATION:
            value = duration_text(value)
        elif key.kind == STR_LIST:
            value = list(value)
        rows.append((key.dotted, value, config.sources[key.dotted]))
    return rows


def duration_text(seconds: float) -> str:
    """`seconds` exactly, in the largest whole unit: "6h", "30m", "90s", "1.5s"."""
    if seconds == int(seconds) and seconds > 0:
        for unit, size in (("h", 3600), ("m", 60)):
            if seconds % size == 0:
                return f"{int(seconds) // size}{unit}"
    return f"{seconds:g}s"


# --- the layers -------------------------------------------------------------------------

def _defaults() -> Tuple[Dict[str, object], Dict[str, str]]:
    values = {k.dotted: _convert(k, k.default, from_text=False) for k in KEYS}
    return values, {k.dotted: "default" for k in KEYS}


def _find_file(repo: str, config_file: Optional[str]) -> Optional[Tuple[str, str]]:
    """(path to open, label for messages) of the config file, or None if there is none."""
    if config_file is not None:
        if not os.path.isfile(config_file):
            raise ConfigError("config file not found", f"--config {config_file}",
                              "check the path, or leave out --config to use qw.toml")
        return config_file, config_file
    for name in _CONFIG_NAMES:
        path = os.path.join(repo, *name.split("/"))
        if os.path.isfile(path):
            return path, name
    return None


def _apply_file(path: str, label: str, values: Dict[str, object], sources: Dict[str, str]):
    try:
        # utf-8-sig: Windows editors may write a byte-order mark, which TOML does not allow.
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{label} is not UTF-8 text ({exc.reason})", label,
                          "save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {label}: {exc.strerror}", label) from None
    data = _parse_toml(text, label)
    lines = _KeyLines(text, label)
    for section, table in data.items():
        if section not in SECTIONS:
            raise _unknown_section(section, table, lines)
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table, got {_shown(table)}",
                              lines.where(section),
                              f"write [{section}] on a line of its own, then its keys below it")
        for name, value in table.items():
            key = KEYS_BY_DOTTED.get(f"{section}.{name}")
            if key is None:
                raise _unknown_key(section, name, lines.where(section, name))
            try:
                values[key.dotted] = _convert(key, value, from_text=False)
            except _Invalid as bad:
                where = lines.where(section, name, *_inner_path(key, value))
                raise ConfigError(f"[{section}] {name} {bad.problem}", where, bad.fix) from None
            sources[key.dotted] = lines.where(section, name)


def _apply_env(env: Mapping[str, str], values: Dict[str, object], sources: Dict[str, str]):
    by_var = {k.env_var: k for k in KEYS}
    prefixes = tuple(f"QW_{s.upper()}_" for s in SECTIONS)
    legacy = [(var, dotted, env[var]) for var, dotted in _QUANTUMWALA_VARS if var in env]
    short = [(var, dotted, env[var]) for var, dotted in _SHORT_VARS if var in env]
    if env.get("QW_DEBUG", "").strip().lower() not in _FALSE_WORDS:
        short.append(("QW_DEBUG", "logging.level", "debug"))
    full = []
    for var in sorted(env):
        if var in by_var:
            full.append((var, by_var[var].dotted, env[var]))
        elif var.startswith(prefixes) and var not in _MARKER_VARS:
            section = var.split("_")[1].lower()
            near = difflib.get_close_matches(var, by_var, n=1)
            fix = (f"did you mean {near[0]}?" if near
                   else "unset it; config.example.toml lists the keys")
            raise ConfigError(f"unknown key [{section}] {var[len(section) + 4:].lower()}",
                              f"environment {var}", fix)
    for var, dotted, raw in legacy + short + full:    # later ones win
        key = KEYS_BY_DOTTED[dotted]
        try:
            values[dotted] = _convert(key, raw, from_text=True)
        except _Invalid as bad:
            raise ConfigError(f"[{key.section}] {key.name} {bad.problem}",
                              f"environment {var}", bad.fix) from None
        sources[dotted] = f"env {var}"


def _apply_flags(flags: Mapping[str, object], values: Dict[str, object], sources: Dict[str, str]):
    for dotted, value in flags.items():
        if value is None:
            continue
        key = KEYS_BY_DOTTED.get(dotted)
        flag = _FLAG_NAMES.get(dotted, "--" + dotted.rpartition(".")[2].replace("_", "-"))
        if key is None:
            near = difflib.get_close_matches(dotted, KEYS_BY_DOTTED, n=1)
            raise ConfigError(f"unknown key {dotted}", f"flag {flag}",
                              f"did you mean {near[0]}?" if near else None)
        try:
            values[dotted] = _convert(key, value, from_text=isinstance(value, str))
        except _Invalid as bad:
            raise ConfigError(f"[{key.section}] {key.name} {bad.problem}", f"flag {flag}",
                              bad.fix) from None
        sources[dotted] = f"flag {flag}"


def _build(values: Mapping[str, object], sources: Dict[str, str]) -> Config:
    sections = {}
    for section, cls in _SECTION_CLASSES.items():
        fields = {k.name: values[k.dotted] for k in KEYS if k.section == section}
        sections[section] = cls(**fields)
    return Config(sources=dict(sources), **sections)


# --- one value --------------------------------------------------------------------------

def _convert(key: Key, value: object, from_text: bool) -> object:
    """`value` as `key` stores it. `from_text`: a string from the environment or a flag,
    where every value is a string (so "8" is a number and "a,b" a list). Raises _Invalid."""
    kind = key.kind
    if kind == INT:
        if from_text and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Invalid(f"must be a whole number, got {_shown(value)}",
                           f"write a whole number, e.g. {key.default}")
        return _in_range(key, value, str(value))
    if kind == FLOAT:
        if from_text:
            try:
                value = float(value)
            except ValueError:
                pass
        if (not isinstance(value, (int, float)) or isinstance(value, bool)
                or not math.isfinite(value)):
            raise _Invalid(f"must be a number, got {_shown(value)}",
                           f"write a number, e.g. {key.default}")
        return _in_range(key, float(value), f"{value:g}")
    if kind == DURATION:
        try:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                seconds = float(value)     # a TOML number is seconds
            else:
                seconds = parse_duration(value)
            if not math.isfinite(seconds):   # nan would make every deadline unreachable
                raise ValueError(value)
        except (ValueError, OverflowError):
            raise _Invalid(f"must be a duration, got {_shown(value)}",
                           "write a duration such as 90, 90s, 30m or 2h") from None
        return _in_range(key, seconds, _shown(value))
    if kind == STR:
        if not isinstance(value, str):
            raise _Invalid(f"must be a string, got {_shown(value)}",
                           "write the value in double quotes")
        return value
    if kind == BOOL:
        if from_text and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
        if not isinstance(value, bool):
            raise _Invalid(f"must be true or false, got {_shown(value)}",
                           "use 1 or 0" if from_text else "write true or false, without quotes")
        return value
    if kind == CHOICE:
        by_lower = {c.lower(): c for c in key.choices}
        if isinstance(value, str) and value.strip().lower() in by_lower:
            return by_lower[value.strip().lower()]
        near = difflib.get_close_matches(str(value).lower(), by_lower, n=1)
        raise _Invalid(f"must be one of {', '.join(key.choices)}, got {_shown(value)}",
                       f"did you mean {by_lower[near[0]]}?" if near
                       else f"use one of {', '.join(key.choices)}")
    if kind == STR_LIST:
        return _string_list(value, from_text)
    if kind == STR_TABLE:
        return _string_table(value, from_text)
    raise AssertionError(f"unknown kind {kind!r} for {key.dotted}")


def _in_range(key: Key, value, shown: str):
    def limit(x):
        return duration_text(x) if key.kind == DURATION else f"{x:g}"
    if key.low is not None and key.high is not None and not key.low <= value <= key.high:
        raise _Invalid(f"must be between {limit(key.low)} and {limit(key.high)}, got {shown}",
                       f"use a value from {limit(key.low)} to {limit(key.high)}")
    if key.low is not None and value < key.low:
        raise _Invalid(f"must be at least {limit(key.low)}, got {shown}",
                       f"use a value of at least {limit(key.low)}")
    return value


def _string_list(value: object, from_text: bool) -> Tuple[str, ...]:
    fix = ("write a comma-separated list or a JSON list of strings, e.g. Read,Edit"
           if from_text else 'write a list of strings, e.g. ["Read", "Edit"]')
    if from_text:
        text = value.strip()
        if not text.startswith("["):
            return tuple(part.strip() for part in text.split(",") if part.strip())
        try:
            value = json.loads(text)
        except ValueError:
            raise _Invalid(f"must be a list of strings, got {_shown(text)} (not valid JSON)",
                           fix) from None
    if not isinstance(value, (list, tuple)):
        raise _Invalid(f"must be a list of strings, got {_shown(value)}", fix)
    for item in value:
        if not isinstance(item, str):
            raise _Invalid(f"must be a list of strings, got {_shown(item)} in the list", fix)
    return tuple(value)


def _string_table(value: object, from_text: bool) -> Dict[str, str]:
    fix = ('write a JSON object of strings, e.g. {"NAME": "value"}' if from_text
           else 'write a table of strings, e.g. env = { NAME = "value" }')
    if from_text:
        if not value.strip():
            return {}
        try:
            value = json.loads(value)
        except ValueError:
            raise _Invalid(f"must be a JSON object of strings, got {_shown(value)}", fix) from None
    if not isinstance(value, dict):
        raise _Invalid(f"must be a table of strings, got {_shown(value)}", fix)
    for name, item in value.items():
        if not isinstance(item, str):
            raise _Invalid(f"must be a table of strings, got {name} = {_shown(item)}",
                           f'quote the value: {name} = "{item}"' if not isinstance(item, dict)
                           else fix)
    return dict(value)


def _inner_path(key: Key, value: object) -> Tuple[str, ...]:
    """The name inside a table value that is wrong, to point at its own line."""
    if key.kind == STR_TABLE and isinstance(value, dict):
        return tuple(n for n, v in value.items() if not isinstance(v, str))[:1]
    return ()


def _shown(value: object) -> str:
    """`value` as the user wrote it (TOML-like: strings in double quotes), kept short."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = str(value)   # TOML dates and times
    return text if len(text) <= 60 else text[:57] + "..."


# --- the file's errors and lines --------------------------------------------------------

def _parse_toml(text: str, label: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib gives its position only in the message: "... (at line 3, column 5)".
        message = str(exc)
        at = re.search(r" \(at line (\d+), column (\d+)\)$", message)
        if at:
            line = at.group(1)
        elif message.endswith(" (at end of document)"):
            line = str(max(1, len(text.splitlines())))
        else:
            line = None
        reason = re.sub(r" \(at [^)]*\)$", "", message)
        fix = ("a key or section appears twice; keep one" if "overwrite" in reason
               else "see config.example.toml for the syntax")
        raise ConfigError(f"invalid TOML: {reason}", f"{label}:{line}" if line else label,
                          fix) from None


def _unknown_section(section: str, value: object, lines: "_KeyLines") -> ConfigError:
    owners = [k.section for k in KEYS if k.name == section]
    if not isinstance(value, dict):
        fix = f"put it under [{owners[0]}]" if owners else "every key belongs in a [section]"
        return ConfigError(f"unknown key {section} outside any section", lines.where(section), fix)
    near = difflib.get_close_matches(section, SECTIONS, n=1)
    fix = (f"did you mean [{near[0]}]?" if near
           else "the sections are " + ", ".join(f"[{s}]" for s in SECTIONS))
    return ConfigError(f"unknown section [{section}]", lines.where(section), fix)


def _unknown_key(section: str, name: str, where: str) -> ConfigError:
    names = [k.name for k in KEYS if k.section == section]
    near = difflib.get_close_matches(name, names, n=1)
    elsewhere = [k.section for k in KEYS if k.name == name]
    if near:
        fix = f"did you mean {near[0]}?"
    elif elsewhere:
        fix = f"{name} belongs in [{elsewhere[0]}]"
    else:
        fix = f"the keys of [{section}] are " + ", ".join(names)
    return ConfigError(f"unknown key [{section}] {name}", where, fix)


class _KeyLines:
    """Where a key sits in a TOML text. tomllib gives no positions, so this scans the text
    for `[section]` headers and `key =` lines (dotted keys too); an unusual layout falls
    back to the section's line, or to the file name alone."""

    _HEADER = re.compile(r"^\s*\[\[?([^\[\]]+)\]\]?\s*(?:#.*)?$")
    _ASSIGN = re.compile(r"""^\s*([\w\-."' ]+?)\s*=""")

    def __init__(self, text: str, label: str):
        self.label = label
        self.paths: List[Tuple[int, Tuple[str, ...]]] = []   # (line, dotted path it starts)
        table: Tuple[str, ...] = ()
        for number, line in enumerate(text.splitlines(), 1):
            header = self._HEADER.match(line)
            if header:
                table = self._split(header.group(1))
                self.paths.append((number, table))
                continue
            assign = self._ASSIGN.match(line)
            if assign:
                self.paths.append((number, table + self._split(assign.group(1))))

    @staticmethod
    def _split(dotted: str) -> Tuple[str, ...]:
        return tuple(part.strip().strip("\"'") for part in dotted.split("."))

    def where(self, *path: str) -> str:
        """"label:line" of the deepest prefix of `path` found in the text, else "label"."""
        for depth in range(len(path), 0, -1):
            target = path[:depth]
            for number, found in self.paths:
                if found[:depth] == target:
                    return f"{self.label}:{number}"
        return self.label
