"""NASM-compatible assembler for trapvisor's guest kernels, built over keystone 0.9.2.

It lays out the NASM subset the guests use over passes until addresses converge, encodes by hand
what keystone gets wrong (notes/unicorn-x86.md section 8) and the rest with keystone, and accepts
an encoding only after capstone decodes it back to the instruction that was written.

Its modules: source (preprocessor and lexer), expressions, operands, parser, layout (the
passes), encode (hand encodings), keystone_glue and guard (the capstone check).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from emu.asm.layout import MAX_PASSES, STICKY_AFTER, Image, ListingLine, _Layout
from emu.asm.parser import _Parser
from emu.asm.source import AsmError, _Preprocessor, read_source

__all__ = ["AsmError", "Image", "ListingLine", "MAX_PASSES", "STICKY_AFTER", "assemble",
           "assemble_file"]


def _assemble_lines(pre: _Preprocessor) -> Image:
    parser = _Parser()
    for src, code in pre.lines:
        parser.feed(src, code)
    if not parser.stmts:
        return Image(b"", parser.origin(), {}, {}, [])
    return _Layout(parser.stmts, parser.origin()).run()


def assemble(source: str, *, filename: str = "<string>",
             include_dirs: Sequence[str | Path] = ()) -> Image:
    """Assemble NASM-dialect `source` into a flat image; raises AsmError.

    Supported: bits 16/32 ([bits N], use16/use32), org, labels and .local labels, equ, %define
    (no parameters), %undef, %include (next to `filename`, then in include_dirs), db/dw/dd/dq,
    resb/resw/resd/resq, times, align N[, db X], $ and $$, NASM operators and number forms.
    """
    pre = _Preprocessor(include_dirs)
    pre.feed(source, filename, ())
    return _assemble_lines(pre)


def assemble_file(path: str | Path, *, include_dirs: Sequence[str | Path] = ()) -> Image:
    """Assemble a file; includes are searched in its own directory, then in include_dirs."""
    path = Path(path)
    pre = _Preprocessor(include_dirs)
    pre.feed(read_source(path), str(path), (str(path.resolve()),))
    return _assemble_lines(pre)
