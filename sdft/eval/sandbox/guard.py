"""Runs one untrusted program inside its sandbox folder. Executed as a script in a fresh interpreter
by ``sdft.eval.sandbox.run_program``; sdft imports only its exit code.

    python -I guard.py PROGRAM.py SANDBOX_DIR CPU_SECONDS MEMORY_BYTES

Before the program runs, this script sets hard resource limits (CPU time, address space, file size,
no core files) and installs a PEP 578 audit hook that cannot be removed. The hook ends the process
at once (exit code 86, a ``SANDBOX-BLOCKED:`` line on stderr) when the program tries to:
write, create, delete or rename a file outside the sandbox folder; open a socket or resolve a host;
start or signal a process; load native code through ctypes; or change the limits.
The parent runs this inside bubblewrap's namespaces (see ``runner``): the hook is the second layer.
Reading files is allowed (the program imports the standard library). NumPy, which the HumanEval
harness's programs import, is imported before the hook (it loads ``_ctypes`` itself); the program's own
use of ctypes stays blocked.
"""

import os
import resource
import sys

BLOCKED_EXIT = 86

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
# event -> positions of the path arguments that must stay inside the sandbox
_PATH_EVENTS = {
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,), "os.chown": (0,),
    "os.rename": (0, 1), "os.link": (1,), "os.symlink": (1,), "os.truncate": (0,), "os.utime": (0,),
    "os.chflags": (0,), "os.lchflags": (0,), "os.setxattr": (0,), "os.removexattr": (0,),
    "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copytree": (1,), "shutil.move": (0, 1),
    "shutil.chown": (0,), "os.mkfifo": (0,), "os.mknod": (0,),
}
_DENIED_EVENTS = {
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "os.kill", "os.killpg", "pty.spawn", "os.startfile", "resource.setrlimit", "resource.prlimit",
    "sys.addaudithook", "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
    "socket.gethostbyname", "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg", "sys.remote_exec",
}
# Native modules that start processes or call C without raising an audit event of their own.
_DENIED_IMPORTS = {"_posixsubprocess", "_ctypes"}


def _set_limits(cpu_seconds: int, memory_bytes: int) -> None:
    limits = {resource.RLIMIT_CPU: cpu_seconds, resource.RLIMIT_AS: memory_bytes,
              resource.RLIMIT_FSIZE: 64 * 2**20, resource.RLIMIT_CORE: 0}
    for which, value in limits.items():
        resource.setrlimit(which, (value, value))


def _install_hook(root: str) -> None:
    def inside(path) -> bool:
        if isinstance(path, int):  # an already open descriptor
            return True
        try:
            p = os.path.realpath(os.fsdecode(path))
        except TypeError:
            return False
        return p == root or p.startswith(root + os.sep) or p == os.devnull

    def deny(what: str) -> None:
        os.write(2, f"\nSANDBOX-BLOCKED: {what}\n".encode("utf-8", "replace"))
        os._exit(BLOCKED_EXIT)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writes and path is not None and not inside(path):
                deny(f"write to {path!r} outside the sandbox")
        elif event in _PATH_EVENTS:
            for i in _PATH_EVENTS[event]:
                if i < len(args) and args[i] is not None and not inside(args[i]):
                    deny(f"{event} on {args[i]!r} outside the sandbox")
        elif event in _DENIED_EVENTS or event.startswith("ctypes."):
            deny(event)
        elif event == "import" and args and args[0] in _DENIED_IMPORTS:
            deny(f"import {args[0]}")

    sys.addaudithook(hook)


# Trusted modules imported before the hook, for programs that import them (numpy loads _ctypes).
_PRELOAD = ("numpy",)


def _preload() -> None:
    for name in _PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass


def main() -> None:
    program, root, cpu_seconds, memory_bytes = sys.argv[1], os.path.realpath(sys.argv[2]), sys.argv[3], sys.argv[4]
    with open(program, encoding="utf-8") as f:
        code = compile(f.read(), program, "exec")
    os.chdir(root)
    _preload()
    _set_limits(int(cpu_seconds), int(memory_bytes))
    _install_hook(root)
    sys.argv = [program]
    exec(code, {"__name__": "__main__", "__file__": program})


if __name__ == "__main__":
    main()
