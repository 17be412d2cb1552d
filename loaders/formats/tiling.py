"""The rule safetensors and GGUF share: a file's tensors fill its data section one after another.

Sorted by offset, the first tensor starts at 0 and each next one where the previous ended (rounded up to
the format's alignment: 1 for safetensors, `general.alignment` for GGUF); the data section ends at the
last tensor's end (or, with an alignment, at that end rounded up). A header that breaks the rule was
damaged: a changed type, size or offset, a shifted or cut data section. Each failure is a ModelFileError
naming the file and the tensors where the rule breaks.
"""

from __future__ import annotations

from ..errors import ModelFileError, brief, byte_count


def align_up(offset: int, alignment: int) -> int:
    return -(-offset // alignment) * alignment


def check_tiling(path, spans: list[tuple[str, int, int]], data_size: int, hint: str, alignment: int = 1) -> None:
    """spans: (tensor name, offset in the data section, byte size) for every tensor."""
    cursor, end, previous = 0, 0, None
    aligned = f" (tensors start on {alignment}-byte boundaries)" if alignment > 1 else ""
    for name, offset, nbytes in sorted(spans, key=lambda span: (span[1], span[2])):
        if offset != cursor:
            where = f"tensor {brief(name)} starts at byte {offset} of the data section, " + (
                f"inside tensor {brief(previous)} (which ends at {end})" if offset < cursor else
                f"leaving {byte_count(offset - cursor)} unused after "
                + (f"tensor {brief(previous)}" if previous is not None else "the header") + aligned)
            raise ModelFileError(path, "has overlapping or misplaced tensors (its tensors must fill the data "
                                 "section one after another)", found=where, hint=hint)
        end = offset + nbytes
        cursor, previous = align_up(end, alignment), name
    if data_size < end:
        raise ModelFileError(
            path, "is truncated", found=f"{data_size} bytes of tensor data",
            expected=f"{end} bytes as its header declares ({byte_count(end - data_size)} missing)",
            hint="The download was probably cut short; download the file again.",
        )
    if data_size > cursor:
        raise ModelFileError(path, "has data its header does not account for",
                             found=f"{data_size} bytes of tensor data",
                             expected=f"{cursor} bytes as its header declares ({byte_count(data_size - cursor)} extra)",
                             hint=hint)
    if end < data_size < cursor:
        raise ModelFileError(path, "ends inside the padding after its last tensor",
                             found=f"{data_size} bytes of tensor data", expected=f"{end} or {cursor} bytes", hint=hint)
