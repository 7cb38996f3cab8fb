"""``qmprt``: the command line. ``qmprt --help`` lists the commands."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from qmprt import config as config_module
from qmprt.errors import QmprtError


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("qemu.qmp").setLevel(logging.WARNING)


def _cmd_qmp(args: argparse.Namespace) -> int:
    from qemu.qmp import qmp_shell

    from qmprt.vm.locate import locate

    cfg = config_module.load(args.config, state_dir=args.state_dir)
    vm = locate(args.target, cfg.runtime.state_dir)
    sys.argv = ["qmp-shell", *(["-p"] if args.pretty else []), str(vm.qmp_shell_socket)]
    qmp_shell.main()
    return 0


def _cmd_console(args: argparse.Namespace) -> int:
    from qmprt.vm.locate import locate
    from qmprt.vm.terminal import attach

    cfg = config_module.load(args.config, state_dir=args.state_dir)
    vm = locate(args.target, cfg.runtime.state_dir)
    attach(str(vm.console_socket))
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--state-dir", help="state root (default from config: /var/lib/qmprt)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qmprt", description="A CRI runtime whose pods are QEMU VMs")
    parser.add_argument("--log-level", default="info")
    commands = parser.add_subparsers(dest="command", required=True)

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
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return int(args.func(args))
    except QmprtError as err:
        print(f"qmprt: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
