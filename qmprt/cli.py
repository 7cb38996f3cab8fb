"""``qmprt``: the command line. ``qmprt --help`` lists the commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from qmprt import config as config_module
from qmprt.cri import disable_grpc_fork_support
from qmprt.errors import InvalidArgument, QmprtError


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("qemu.qmp").setLevel(logging.WARNING)


def _cmd_qmp(args: argparse.Namespace) -> int:
    from qemu.qmp import qmp_shell

    from qmprt.pod.locate import locate_pod_or_vm

    cfg = config_module.load(args.config, state_dir=args.state_dir)
    vm = locate_pod_or_vm(args.target, cfg.runtime.state_dir)
    sys.argv = ["qmp-shell", *(["-p"] if args.pretty else []), str(vm.qmp_shell_socket)]
    qmp_shell.main()
    return 0


def _cmd_console(args: argparse.Namespace) -> int:
    from qmprt.pod.locate import locate_pod_or_vm
    from qmprt.vm.terminal import attach

    cfg = config_module.load(args.config, state_dir=args.state_dir)
    vm = locate_pod_or_vm(args.target, cfg.runtime.state_dir)
    attach(str(vm.console_socket))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from qmprt.cri.server import serve

    cfg = config_module.load(args.config, state_dir=args.state_dir, run_dir=args.run_dir, socket=args.socket)
    if args.log_level is None:
        logging.getLogger().setLevel(cfg.runtime.log_level.upper())
    asyncio.run(serve(cfg, streaming=_streaming_server))
    return 0


def _cmd_proxy(args: argparse.Namespace) -> int:
    from qmprt.proxy.config import load_proxy_config
    from qmprt.proxy.server import serve

    if args.config is None:
        raise InvalidArgument("qmprt proxy needs --config: a TOML file naming its downstreams")
    asyncio.run(serve(load_proxy_config(args.config, socket=args.socket)))
    return 0


def _streaming_server(cfg: config_module.Config, runtime: Any) -> Any:
    """The Exec/Attach/PortForward server beside the CRI socket (the runtime is the pod layer's)."""
    from qmprt.streaming.server import StreamingServer

    return StreamingServer(cfg.streaming, runtime)


def _ctl(handler: Callable[[Any, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A ctl subcommand: open a client on the endpoint (flag, $CONTAINER_RUNTIME_ENDPOINT, config)."""

    def run(args: argparse.Namespace) -> int:
        from qmprt.ctl.client import CRIClient

        endpoint = args.runtime_endpoint or os.environ.get("CONTAINER_RUNTIME_ENDPOINT")
        if not endpoint:
            endpoint = config_module.load(args.config).runtime.socket
        with CRIClient(endpoint, timeout=args.timeout) as client:
            return handler(client, args)

    return run


_Handler = Callable[[Any, argparse.Namespace], int]
_Add = Callable[[str, str, _Handler], argparse.ArgumentParser]


def _add_ctl(commands: Any) -> None:
    from qmprt.ctl import commands as ctl

    parser = commands.add_parser("ctl", help="a small CRI client for people without crictl")
    parser.add_argument("-r", "--runtime-endpoint", help="unix socket path (default: the config's runtime.socket)")
    parser.add_argument("--config", help="TOML config file to take the default socket from")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per call (default 120)")
    sub = parser.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")
    out = sys.stdout

    def add(name: str, help: str, handler: _Handler) -> argparse.ArgumentParser:
        command: argparse.ArgumentParser = sub.add_parser(name, help=help)
        command.set_defaults(func=_ctl(handler))
        return command

    # In this order: it is the order of ``qmprt ctl --help``.
    _add_ctl_runtime(add, ctl, out)
    _add_ctl_create(add, ctl, out)
    _add_ctl_listing(add, ctl, out)
    _add_ctl_io(add, ctl)
    _add_ctl_removal(add, ctl, out)
    _add_ctl_images(add, ctl, out)
    _add_ctl_image(sub)
    _add_ctl_template(sub)
    _add_ctl_stats(add, ctl, out)


def _listing(command: argparse.ArgumentParser) -> None:
    command.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    command.add_argument("-q", "--quiet", action="store_true", help="only ids")
    command.add_argument("-l", "--label", action="append", default=[], help="key=value (repeatable, ANDed)")
    command.add_argument("-s", "--state", default="", help="only objects in this state")


def _document(command: argparse.ArgumentParser) -> argparse.ArgumentParser:
    command.add_argument("-o", "--output", choices=["json", "yaml"], default="json")
    return command


def _add_ctl_runtime(add: _Add, ctl: Any, out: Any) -> None:
    """``version``, ``info``: the runtime itself."""
    add("version", "the runtime's name and versions", lambda c, a: ctl.version(c, out))
    _document(add("info", "the runtime's status and config", lambda c, a: ctl.info(c, out, a.output)))


def _add_ctl_create(add: _Add, ctl: Any, out: Any) -> None:
    """``runp``, ``create``, ``start``: pods and containers come to life."""
    command = add("runp", "run a pod sandbox", lambda c, a: ctl.run_pod(c, a.pod_config, a.runtime, out))
    command.add_argument("--runtime", default="", help="RuntimeClass handler (default: the default handler)")
    command.add_argument("pod_config", help="pod sandbox config, JSON or YAML as crictl takes it")

    command = add(
        "create", "create a container in a pod",
        lambda c, a: ctl.create(c, a.pod_id, a.container_config, a.pod_config, out),
    )
    command.add_argument("pod_id")
    command.add_argument("container_config", help="container config, JSON or YAML")
    command.add_argument("pod_config", help="the pod's sandbox config, JSON or YAML")

    command = add("start", "start containers", lambda c, a: ctl.start(c, a.ids, out))
    command.add_argument("ids", nargs="+", metavar="ID")


def _add_ctl_listing(add: _Add, ctl: Any, out: Any) -> None:
    """``ps``, ``pods``, ``inspect``, ``inspectp``: what there is, and the status of one."""
    command = add("ps", "list containers", lambda c, a: ctl.containers(
        c, out, all=a.all, pod=a.pod, state=a.state, labels=ctl.labels_from(a.label), quiet=a.quiet, format=a.output
    ))
    command.add_argument("-a", "--all", action="store_true", help="exited and created ones too")
    command.add_argument("-p", "--pod", default="", help="only the containers of this pod (id or prefix)")
    _listing(command)

    command = add("pods", "list pod sandboxes", lambda c, a: ctl.pods(
        c, out, name=a.name, state=a.state, labels=ctl.labels_from(a.label), quiet=a.quiet, format=a.output
    ))
    command.add_argument("--name", default="", help="only pods whose name contains this")
    _listing(command)

    command = add("inspect", "a container's status", lambda c, a: ctl.inspect(c, a.id, out, a.output))
    command.add_argument("id")
    _document(command)
    command = add("inspectp", "a pod sandbox's status", lambda c, a: ctl.inspect_pod(c, a.id, out, a.output))
    command.add_argument("id")
    _document(command)


def _add_ctl_io(add: _Add, ctl: Any) -> None:
    """``logs``, ``exec``: a container's output, and commands in it (bytes to our stdout and stderr)."""
    command = add("logs", "print a container's log", lambda c, a: ctl.container_logs(
        c, a.id, _binary(sys.stdout), _binary(sys.stderr), follow=a.follow, tail=a.tail
    ))
    command.add_argument("-f", "--follow", action="store_true", help="keep printing while the container runs")
    command.add_argument("--tail", type=int, default=-1, help="only the last N lines")
    command.add_argument("id")

    command = add("exec", "run a command in a container and wait (ExecSync); its exit code is ours", lambda c, a: (
        ctl.exec_sync(c, a.id, a.cmd, a.exec_timeout, _binary(sys.stdout), _binary(sys.stderr))
    ))
    command.add_argument("--timeout", dest="exec_timeout", type=int, default=0, help="seconds; 0 = no limit")
    command.add_argument("id")
    command.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD ...")


def _add_ctl_removal(add: _Add, ctl: Any, out: Any) -> None:
    """``stop``, ``stopp``, ``rm``, ``rmp``: each takes one or more ids."""
    command = add("stop", "stop containers", lambda c, a: ctl.stop(c, a.ids, a.stop_timeout, out))
    command.add_argument("-t", "--timeout", dest="stop_timeout", type=int, default=10, help="grace seconds")
    command.add_argument("ids", nargs="+", metavar="ID")
    for name, help, handler in (
        ("stopp", "stop pod sandboxes", lambda c, a: ctl.stop_pods(c, a.ids, out)),
        ("rm", "remove containers", lambda c, a: ctl.remove(c, a.ids, out)),
        ("rmp", "remove pod sandboxes", lambda c, a: ctl.remove_pods(c, a.ids, out)),
    ):
        add(name, help, handler).add_argument("ids", nargs="+", metavar="ID")


def _add_ctl_images(add: _Add, ctl: Any, out: Any) -> None:
    """``images``, ``pull``, ``rmi``, ``imagefsinfo``: images through the server."""
    command = add("images", "list images", lambda c, a: ctl.images(c, out, quiet=a.quiet, format=a.output))
    command.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    command.add_argument("-q", "--quiet", action="store_true", help="only ids")

    command = add("pull", "pull an image", lambda c, a: ctl.pull(
        c, a.name, out, progress=sys.stderr, username=a.creds.partition(":")[0], password=a.creds.partition(":")[2]
    ))
    command.add_argument("--creds", default="", help="USER:PASSWORD for the image server")
    command.add_argument("name")
    command = add("rmi", "remove images", lambda c, a: ctl.remove_images(c, a.names, out))
    command.add_argument("names", nargs="+", metavar="NAME")
    _document(add("imagefsinfo", "usage of the image filesystem", lambda c, a: ctl.image_fs_info(c, out, a.output)))


def _add_ctl_stats(add: _Add, ctl: Any, out: Any) -> None:
    command = add("stats", "CPU, memory and disk of containers", lambda c, a: ctl.stats(
        c, out, pod=a.pod, labels=ctl.labels_from(a.label), format=a.output
    ))
    command.add_argument("-p", "--pod", default="", help="only the containers of this pod")
    command.add_argument("-l", "--label", action="append", default=[], help="key=value (repeatable, ANDed)")
    command.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")


def _add_ctl_image(ctl_commands: Any) -> None:
    """``ctl image import``: on the state directory itself, no server (so no client is opened)."""
    parser = ctl_commands.add_parser("image", help="work on the node's image store directly, without a server")
    sub = parser.add_subparsers(dest="image_command", required=True, metavar="COMMAND")
    command = sub.add_parser(
        "import", help="register a local disk image under a name, with every check a pull has (safe while serve runs)"
    )
    command.add_argument("file", help="a qcow2 or raw disk image")
    command.add_argument("--name", required=True, help="the image name, as pods will give it (e.g. example.org/tiny:1)")
    # Its own dest: a subparser's default would overwrite ``ctl --config``.
    command.add_argument("--config", dest="store_config", help="TOML config file (state_dir, [image] limits)")
    command.add_argument("--state-dir", help="state root (default from config: /var/lib/qmprt)")
    command.add_argument("--kernel", help="a trusted kernel for this image, so pods may boot it directly (qmprt.io/boot)")
    command.add_argument("--initrd", help="the initramfs that goes with --kernel")
    command.add_argument("--cmdline", default="", help="the kernel command line for direct boot (root=…)")

    def run(args: argparse.Namespace) -> int:
        from qmprt.ctl.local import import_image

        if (args.initrd or args.cmdline) and not args.kernel:
            raise InvalidArgument("--initrd and --cmdline go with --kernel")
        cfg = config_module.load(args.store_config or args.config, state_dir=args.state_dir)
        return import_image(cfg, args.file, args.name, sys.stdout, args.kernel, args.initrd, args.cmdline)

    command.set_defaults(func=run)


def _add_ctl_template(ctl_commands: Any) -> None:
    """``ctl template warm|ls|rm``: VM templates on the state directory itself (qmprt.ctl.templates)."""
    parser = ctl_commands.add_parser("template", help="VM templates (qmprt.io/boot: template) on this node")
    sub = parser.add_subparsers(dest="template_command", required=True, metavar="COMMAND")

    def local(command: argparse.ArgumentParser, run: Callable[[Any, argparse.Namespace], int]) -> None:
        command.add_argument("--config", dest="store_config", help="TOML config file (state_dir, [vm])")
        command.add_argument("--state-dir", help="state root (default from config: /var/lib/qmprt)")
        command.set_defaults(func=lambda args: run(config_module.load(args.store_config or args.config,
                                                                      state_dir=args.state_dir), args))

    from qmprt.ctl import templates

    warm = sub.add_parser("warm", help="build the template pods of IMAGE with this size would use")
    warm.add_argument("image")
    warm.add_argument("--memory", default="", help="the pods' memory limit (256Mi); none: [vm] memory_mib of guest RAM")
    warm.add_argument("--cpus", type=int, default=1, help="their vCPUs (default 1)")
    warm.add_argument("--nics", type=int, default=1, help="their CNI interfaces (default 1)")
    local(warm, lambda cfg, a: templates.warm(cfg, a.image, sys.stdout, memory=a.memory, cpus=a.cpus, nics=a.nics))
    local(sub.add_parser("ls", help="list the templates"), lambda cfg, a: templates.list_templates(cfg, sys.stdout))
    remove = sub.add_parser("rm", help="remove a template (clones of it keep running)")
    remove.add_argument("id")
    local(remove, lambda cfg, a: templates.remove(cfg, a.id, sys.stdout))


def _binary(stream: Any) -> Any:
    stream.flush()
    return stream.buffer


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--state-dir", help="state root (default from config: /var/lib/qmprt)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qmprt", description="A CRI runtime whose pods are QEMU VMs")
    parser.add_argument("--log-level", default=None, help="debug, info, warning, error (default info)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve CRI v1 on a unix socket (kubelet's or crictl's endpoint)")
    serve.add_argument("--config", help="TOML config file")
    serve.add_argument("--socket", help="unix socket path (default from config: /run/qmprt/qmprt.sock)")
    serve.add_argument("--state-dir", help="state root (default from config: /var/lib/qmprt)")
    serve.add_argument("--run-dir", help="runtime directory for VM sockets (default from config: /run/qmprt)")
    serve.set_defaults(func=_cmd_serve)

    proxy = commands.add_parser(
        "proxy", help="serve CRI v1 in front of qmprt and containerd: VM pods by RuntimeClass handler, the rest to containerd"
    )
    proxy.add_argument("--config", help="the proxy's TOML config: its [[downstream]] runtimes")
    proxy.add_argument("--socket", help="unix socket path (default from config: /run/qmprt/proxy.sock)")
    proxy.set_defaults(func=_cmd_proxy)

    _add_ctl(commands)

    qmp = commands.add_parser("qmp", help="open a qmp-shell on a live VM's second monitor")
    _common(qmp)
    qmp.add_argument("--pretty", action="store_true", help="pretty-print QMP replies")
    qmp.add_argument("target", help="a VM id (or unique prefix), a pod, or a VM state directory")
    qmp.set_defaults(func=_cmd_qmp)

    console = commands.add_parser("console", help="attach to a live VM's serial console")
    _common(console)
    console.add_argument("target", help="a VM id (or unique prefix), a pod, or a VM state directory")
    console.set_defaults(func=_cmd_console)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    disable_grpc_fork_support()  # before build_parser: the ctl commands load grpc
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level or ("warning" if args.command == "ctl" else "info"))
    try:
        return int(args.func(args))
    except QmprtError as err:
        print(f"qmprt: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `qmprt ctl logs … | head`: the reader left; say nothing more, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
