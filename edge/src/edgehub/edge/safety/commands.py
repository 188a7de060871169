"""The command classifier's knowledge: which programs delete, recurse, reach the network, run other
commands... (``effects`` applies these tables; a program not named here has only the effects its paths
and redirections show)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class ParsedOptions(Protocol):
    """What a ``Spec.classify`` hook sees of a program's arguments."""

    @property
    def short(self) -> frozenset[str]: ...
    @property
    def long(self) -> frozenset[str]: ...
    @property
    def operands(self) -> list[str | None]: ...
    @property
    def values(self) -> list[str | None]: ...


Classify = Callable[[ParsedOptions, set[str]], None]


@dataclass(frozen=True, slots=True)
class Spec:
    """How one program's arguments are read and what it does."""

    effects: frozenset[str] = frozenset()
    """Effects of every run of the program."""
    long: frozenset[str] = frozenset()
    """Its long options (so that unambiguous prefixes like ``--rec`` resolve)."""
    short_with_arg: str = ""
    """Short options that take a value (``-n 5``)."""
    classify: Classify | None = None
    """Effects that depend on options or operands."""
    pure: bool = False
    """Its operands are text, not paths (``echo``, ``printf``...)."""
    no_options: bool = False
    """Every argument is an operand (``echo -rf`` prints ``-rf``)."""


@dataclass(frozen=True, slots=True)
class Wrapper:
    """A program that runs the command named after its own options (``env``, ``nice``, ``sudo``...)."""

    effects: frozenset[str] = frozenset()
    with_arg: frozenset[str] = frozenset()
    """Its options that take a value as the next word."""
    opaque: frozenset[str] = frozenset()
    """Options that make the wrapped command invisible (``env -S``, ``su -c``): ``indirect``."""
    operands: int = 0
    """Words between its options and the command (``timeout DURATION cmd``)."""
    assignments: bool = False
    """Takes ``NAME=value`` words before the command (``env``)."""


def _recursive(short: str, long: str = "recursive") -> Classify:
    def hook(opts: ParsedOptions, fx: set[str]) -> None:
        if opts.short & set(short) or long in opts.long:
            fx.add("recursive")

    return hook


def _rm(opts: ParsedOptions, fx: set[str]) -> None:
    if opts.short & {"r", "R"} or opts.long & {"recursive", "no-preserve-root"}:
        fx.add("recursive")


def _shred(opts: ParsedOptions, fx: set[str]) -> None:
    if "u" in opts.short or opts.long & {"remove", "zero"}:
        fx.add("delete")


def _sed(opts: ParsedOptions, fx: set[str]) -> None:
    if "i" in opts.short or "in-place" in opts.long:
        fx.add("write")


def _date(opts: ParsedOptions, fx: set[str]) -> None:
    if "s" in opts.short or "set" in opts.long:
        fx.add("system")


def _hostname(opts: ParsedOptions, fx: set[str]) -> None:
    if opts.operands or opts.short & {"F", "b"} or opts.long & {"file", "boot"}:
        fx.add("system")


def _rsync(opts: ParsedOptions, fx: set[str]) -> None:
    if opts.short & {"r", "a"} or opts.long & {"recursive", "archive"}:
        fx.add("recursive")
    if any(o.startswith("delete") or o.startswith("remove-source") for o in opts.long):
        fx |= {"delete", "recursive"}
    if any(w is None or re.match(r"^([^/]*:|rsync://)", w) for w in opts.operands):
        fx.add("network")


def _subcommand(table: dict[str, frozenset[str]]) -> Classify:
    def hook(opts: ParsedOptions, fx: set[str]) -> None:
        sub = next((w for w in opts.operands if w is None or not w.startswith("-")), "")
        if sub is None:
            fx.add("unparsed")
            return
        fx |= table.get(sub, frozenset())
        if "c" in opts.short:  # git -c alias.x='!cmd', core.sshCommand=...: runs what it is given
            fx.add("indirect")
        if sub in ("clean", "rm") and (sub == "clean" or opts.short & {"r", "R"}):
            fx.add("recursive")

    return hook


def _interpreter(opts: ParsedOptions, fx: set[str]) -> None:
    if {"pip", "pip3", "ensurepip"} & set(opts.values):  # python3 -m pip install ...
        fx.add("network")


_F = frozenset
_NET = _F({"network"})
_SYS = _F({"system"})
_INSTALL = {k: _NET for k in ("install", "add", "download", "update", "upgrade", "fetch", "get", "sync")}
_GIT = {
    **{k: _NET for k in ("clone", "fetch", "pull", "push", "ls-remote", "submodule", "remote", "archive")},
    "clean": _F({"delete"}),
    "rm": _F({"delete"}),
}

SPECS: dict[str, Spec] = {
    "rm": Spec(
        _F({"delete"}),
        _F(
            {
                "recursive",
                "force",
                "interactive",
                "one-file-system",
                "no-preserve-root",
                "preserve-root",
                "dir",
            }
        )
        | _F({"verbose", "help", "version"}),
        classify=_rm,
    ),
    "rmdir": Spec(
        _F({"delete"}),
        _F({"parents", "ignore-fail-on-non-empty", "verbose"}),
        classify=_recursive("p", "parents"),
    ),
    "unlink": Spec(_F({"delete"})),
    "shred": Spec(
        _F({"disk"}), _F({"remove", "zero", "force", "iterations", "size", "exact"}), "nsu", _shred
    ),
    "chmod": Spec(
        _F({"permissions"}),
        _F({"recursive", "reference", "changes", "silent", "quiet"}),
        classify=_recursive("R"),
    ),
    "chown": Spec(
        _F({"permissions"}), _F({"recursive", "reference", "from", "dereference"}), classify=_recursive("R")
    ),
    "chgrp": Spec(
        _F({"permissions"}), _F({"recursive", "reference", "dereference"}), classify=_recursive("R")
    ),
    "setfacl": Spec(
        _F({"permissions"}), _F({"recursive", "modify", "remove", "set"}), "mxMXs", _recursive("R")
    ),
    "chattr": Spec(_F({"permissions"}), classify=_recursive("R")),
    "chcon": Spec(_F({"permissions"}), _F({"recursive"}), classify=_recursive("R")),
    "cp": Spec(
        _F({"write"}), _F({"recursive", "archive", "target-directory"}), "tS", _recursive("rRa", "recursive")
    ),
    "mv": Spec(_F({"write"}), _F({"target-directory"}), "tS"),
    "install": Spec(_F({"write"}), short_with_arg="gmotS"),
    "ln": Spec(_F({"write"}), short_with_arg="tS"),
    "touch": Spec(_F({"write"}), short_with_arg="drt"),
    "truncate": Spec(_F({"write"}), short_with_arg="sr"),
    "mkdir": Spec(_F({"write"}), short_with_arg="mZ"),
    "tee": Spec(_F({"write"})),
    "sed": Spec(_F(), _F({"in-place", "expression", "file"}), "ef", _sed),
    "rsync": Spec(
        _F({"write"}),
        _F({"recursive", "archive", "delete", "delete-after", "delete-before"})
        | _F({"delete-during", "delete-excluded", "remove-source-files"}),
        "e",
        _rsync,
    ),
    "git": Spec(short_with_arg="Cc", classify=_subcommand(_GIT)),
    "date": Spec(_F(), _F({"set", "date", "reference"}), "sdr", _date, pure=True),
    "hostname": Spec(_F(), _F({"file", "boot"}), "F", _hostname, pure=True),
    "find": Spec(_F({"recursive"}), no_options=True),
}
for _name in (
    "pip",
    "pip3",
    "npm",
    "pnpm",
    "yarn",
    "gem",
    "cargo",
    "go",
    "apt",
    "apt-get",
    "dnf",
    "yum",
    "apk",
):
    SPECS[_name] = Spec(classify=_subcommand(_INSTALL))
for _name in ("apt", "apt-get", "dnf", "yum", "apk", "snap", "flatpak"):
    SPECS[_name] = Spec(_SYS, classify=_subcommand(_INSTALL))
for _name in ("echo", "printf", "true", "false", ":", "test", "[", "sleep", "seq", "expr", "yes", "basename"):
    SPECS[_name] = Spec(pure=True, no_options=_name in ("echo", "printf"))
for _name in (
    "export",
    "unset",
    "set",
    "shift",
    "exit",
    "return",
    "wait",
    "dirname",
    "whoami",
    "id",
    "uname",
):
    SPECS[_name] = Spec(pure=True)
_NETWORK_TOOLS = """curl wget nc ncat netcat socat ssh scp sftp ftp tftp telnet ping ping6
traceroute tracepath dig nslookup host whois aria2c lftp mosh http https nmap ssh-keyscan ssh-copy-id sshfs"""
_DISK_TOOLS = """dd mkfs mke2fs mkswap wipefs fdisk sfdisk gdisk cfdisk parted blkdiscard losetup hdparm
badblocks cryptsetup mkfs.ext2 mkfs.ext3 mkfs.ext4 mkfs.xfs mkfs.btrfs mkfs.vfat mkfs.fat"""
_PROCESS_TOOLS = "kill killall pkill skill shutdown reboot halt poweroff init telinit systemctl service"
_SYSTEM_TOOLS = """mount umount swapon swapoff modprobe insmod rmmod sysctl iptables ip6tables nft ifconfig
route ip crontab at batch setcap useradd userdel usermod groupadd groupdel passwd chpasswd visudo hwclock
timedatectl hostnamectl loginctl renice ulimit mknod"""
for _name in str.split(_NETWORK_TOOLS):
    SPECS[_name] = Spec(_NET)
for _name in str.split(_DISK_TOOLS):
    SPECS[_name] = Spec(_F({"disk"}))
for _name in str.split(_PROCESS_TOOLS):
    SPECS[_name] = Spec(_SYS, pure=True)
for _name in str.split(_SYSTEM_TOOLS):
    SPECS[_name] = Spec(_SYS)
for _name in ("eval", "source", ".", "trap", "alias", "enable", "watch", "parallel", "hash", "fc"):
    SPECS[_name] = Spec(_F({"indirect"}))
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "csh", "tcsh", "rbash"})
for _name in SHELLS:
    SPECS[_name] = Spec(_F({"indirect"}))
for _name in (
    "perl",
    "ruby",
    "node",
    "nodejs",
    "php",
    "lua",
    "Rscript",
    "awk",
    "gawk",
    "mawk",
    "nawk",
    "deno",
    "bun",
):
    SPECS[_name] = Spec(_F({"code"}), short_with_arg="eEfF" if "awk" in _name else "")
_PYTHON = Spec(_F({"code"}), short_with_arg="cmWX", classify=_interpreter)
_DEFAULT = Spec()


def spec_for(name: str) -> Spec:
    """How ``name`` is read (the default: plain GNU options, operands are paths, no effects of its own)."""
    if re.fullmatch(r"python[0-9.]*|pypy[0-9.]*", name):
        return _PYTHON
    if name.startswith("mkfs."):
        return SPECS["mkfs"]
    return SPECS.get(name, _DEFAULT)


WRAPPERS: dict[str, Wrapper] = {
    "env": Wrapper(
        with_arg=_F({"-u", "--unset", "-C", "--chdir"}),
        opaque=_F({"-S", "--split-string", "-C", "--chdir"}),
        assignments=True,
    ),
    "nice": Wrapper(with_arg=_F({"-n", "--adjustment"})),
    "nohup": Wrapper(),
    "setsid": Wrapper(),
    "time": Wrapper(with_arg=_F({"-o", "-f", "--output", "--format"})),
    "command": Wrapper(),
    "builtin": Wrapper(),
    "exec": Wrapper(with_arg=_F({"-a"})),
    "coproc": Wrapper(),
    "stdbuf": Wrapper(with_arg=_F({"-i", "-o", "-e", "--input", "--output", "--error"})),
    "timeout": Wrapper(with_arg=_F({"-s", "-k", "--signal", "--kill-after"}), operands=1),
    "busybox": Wrapper(),
    "toybox": Wrapper(),
    "ionice": Wrapper(
        with_arg=_F({"-c", "-n", "--class", "--classdata"}), opaque=_F({"-p", "--pid", "-P", "-u"})
    ),
    "taskset": Wrapper(_SYS, opaque=_F({"-p", "--pid"}), operands=1),
    "chrt": Wrapper(_SYS, opaque=_F({"-p", "--pid"}), operands=1),
    "sudo": Wrapper(
        _SYS,
        _F({"-u", "-g", "-C", "-D", "-h", "-p", "-R", "-r", "-t", "-T", "-U", "--user", "--group"}),
        _F({"-s", "-i", "--shell", "--login", "-e", "--edit"}),
    ),
    "doas": Wrapper(_SYS, _F({"-u", "-C"}), _F({"-s"})),
    "pkexec": Wrapper(_SYS, _F({"--user"})),
    "runuser": Wrapper(
        _SYS, _F({"-u", "-g", "-G", "--user", "--group"}), _F({"-c", "--command", "-l", "--login"})
    ),
    "su": Wrapper(
        _SYS,
        _F({"-g", "-G", "-s", "--shell", "--group"}),
        _F({"-c", "--command", "-", "-l", "--login"}),
        operands=1,
    ),
    "chroot": Wrapper(_SYS, _F({"--userspec", "--groups"}), operands=1),
    "nsenter": Wrapper(_SYS, _F({"-t", "--target"})),
    "unshare": Wrapper(_SYS),
    "flock": Wrapper(_F({"indirect"}), _F({"-w", "-E", "--timeout"}), _F({"-c", "--command"}), operands=1),
    "xargs": Wrapper(
        _F({"indirect"}), _F({"-I", "-i", "-n", "-P", "-d", "-E", "-L", "-s", "-a"}), operands=0
    ),
    "strace": Wrapper(_F({"code"}), _F({"-e", "-o", "-p", "-s", "-u"})),
    "ltrace": Wrapper(_F({"code"}), _F({"-e", "-o", "-p", "-s", "-u"})),
}
"""Programs that run another: the classifier looks through them at the command they run."""

LOOKUPS = frozenset({"command", "type", "which"})
"""``command -v rm`` only looks ``rm`` up."""

FIND_EXECS = frozenset({"-exec", "-execdir", "-ok", "-okdir"})
FIND_WRITES = frozenset({"-fprint", "-fprint0", "-fprintf", "-fls"})

HARMLESS_DEVICES = frozenset({"/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"}) | frozenset(
    {"/dev/stdin", "/dev/stdout", "/dev/stderr", "/dev/tty"}
)
"""Paths outside the workspace that reading or writing changes nothing."""

LOADER_VARIABLES = frozenset(
    {
        "PATH",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "LD_AUDIT",
        "BASH_ENV",
        "ENV",
        "IFS",
        "PROMPT_COMMAND",
        "SHELLOPTS",
    }
) | frozenset({"BASHOPTS", "PYTHONPATH", "PYTHONSTARTUP", "PERL5OPT", "NODE_OPTIONS", "GIT_SSH_COMMAND"})
"""Variables that change which program runs or what it loads: setting them is ``indirect``."""
