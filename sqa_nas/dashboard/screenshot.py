"""An SVG screenshot of the dashboard, drawn headless by Textual's test driver (the README's
image is made this way):

    python -m sqa_nas.dashboard.screenshot STUDY [--storage URL] --out docs/dashboard.svg
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from sqa_nas.dashboard.view import Source
from sqa_nas.printable import printable


async def capture(
    source: Source,
    out: str | Path,
    *,
    size: tuple[int, int] = (160, 48),
    pick: str | None = "knee",
    keys: tuple[str, ...] = (),
) -> Path:
    """Open the app on `source`, select `pick`, press `keys`, and save the screen as SVG."""
    from sqa_nas.dashboard.app import Dashboard

    app = Dashboard(source, pick=pick, refresh_s=3600)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        for key in keys:
            await pilot.press(key)
        await pilot.pause()
        svg = app.export_screenshot(title=f"sqa-nas dashboard · {source.name}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(svg, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    """The command line above; returns the exit status (2 for a bad study or --size)."""
    from sqa_nas.dashboard.view import StorageSource
    from sqa_nas.errors import UserError

    p = argparse.ArgumentParser(
        prog="python -m sqa_nas.dashboard.screenshot",
        description="Save an SVG screenshot of the dashboard.",
    )
    p.add_argument("study")
    p.add_argument("--storage", metavar="URL")
    p.add_argument("--out", default="docs/dashboard.svg", metavar="FILE")
    p.add_argument("--size", default="160x48", metavar="COLSxROWS")
    p.add_argument("--pick", default="knee", metavar="SPEC")
    args = p.parse_args(argv)
    try:
        cols, rows = (int(n) for n in args.size.lower().split("x"))
        path = asyncio.run(
            capture(
                StorageSource(args.study, args.storage),
                args.out,
                size=(cols, rows),
                pick=args.pick,
            )
        )
    except ValueError as exc:  # UserError is a ValueError; so is a malformed --size
        kind = "error" if isinstance(exc, UserError) else f"--size {args.size!r}"
        print(printable(f"{kind}: {exc}"), file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
