"""What a compiled shader expects from the host, read from its SPIR-V: the work-group size, the
push-constant block (member offsets and types), the descriptor bindings of set 0 with their
array sizes, and the number of tensor records of the meta block (binding 0). The tests compare
it with the Python mirror of every shader (kernels.SHADERS) for every variant lowering makes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# opcodes, decorations, execution modes and storage classes of the SPIR-V spec (1.3) we read
OP_EXECUTION_MODE, OP_TYPE_INT, OP_TYPE_FLOAT, OP_TYPE_VECTOR = 16, 21, 22, 23
OP_TYPE_ARRAY, OP_TYPE_RUNTIME_ARRAY, OP_TYPE_STRUCT, OP_TYPE_POINTER = 28, 29, 30, 32
OP_CONSTANT, OP_VARIABLE, OP_DECORATE, OP_MEMBER_DECORATE = 43, 59, 71, 72
DEC_BINDING, DEC_DESCRIPTOR_SET, DEC_OFFSET = 33, 34, 35
MODE_LOCAL_SIZE = 17
SC_UNIFORM, SC_PUSH_CONSTANT, SC_STORAGE_BUFFER = 2, 9, 12
MAGIC = 0x07230203


@dataclass
class Interface:
    local_size: tuple[int, int, int]
    push: list[tuple[int, str]]  # (byte offset, GLSL type) of each push-constant member
    bindings: dict[int, int]  # set-0 binding -> descriptor count
    meta_records: int | None  # length of the record array of binding 0


def reflect(code: bytes) -> Interface:
    """The host interface of a SPIR-V compute module."""
    words = struct.unpack(f"<{len(code) // 4}I", code)
    if words[0] != MAGIC:
        raise ValueError("[spirv] not a SPIR-V module")
    types: dict[int, tuple] = {}
    consts: dict[int, int] = {}
    decor: dict[tuple[int, int], int] = {}
    offsets: dict[int, dict[int, int]] = {}
    variables: list[tuple[int, int, int]] = []  # (pointer type, id, storage class)
    local = (1, 1, 1)
    i = 5
    while i < len(words):
        n, op = words[i] >> 16, words[i] & 0xFFFF
        a = words[i + 1 : i + n]
        if op == OP_EXECUTION_MODE and a[1] == MODE_LOCAL_SIZE:
            local = (a[2], a[3], a[4])
        elif op == OP_TYPE_INT:
            types[a[0]] = ("int" if a[2] else "uint",)
        elif op == OP_TYPE_FLOAT:
            types[a[0]] = ("float",)
        elif op == OP_TYPE_VECTOR:
            types[a[0]] = ("vector", a[1], a[2])
        elif op == OP_TYPE_ARRAY:
            types[a[0]] = ("array", a[1], a[2])
        elif op == OP_TYPE_RUNTIME_ARRAY:
            types[a[0]] = ("runtime_array", a[1])
        elif op == OP_TYPE_STRUCT:
            types[a[0]] = ("struct", *a[1:])
        elif op == OP_TYPE_POINTER:
            types[a[0]] = ("pointer", a[1], a[2])
        elif op == OP_CONSTANT:
            consts[a[1]] = a[2]
        elif op == OP_VARIABLE:
            variables.append((a[0], a[1], a[2]))
        elif op == OP_DECORATE and len(a) >= 3:
            decor[(a[0], a[1])] = a[2]
        elif op == OP_MEMBER_DECORATE and a[2] == DEC_OFFSET:
            offsets.setdefault(a[0], {})[a[1]] = a[3]
        i += n

    def name(t: int) -> str:
        ty = types[t]
        if ty[0] == "vector":
            return {"float": "vec", "int": "ivec", "uint": "uvec"}[types[ty[1]][0]] + str(ty[2])
        return ty[0]

    push: list[tuple[int, str]] = []
    bindings: dict[int, int] = {}
    meta = None
    for ptr, var, sc in variables:
        pointee = types[ptr][2]
        if sc == SC_PUSH_CONSTANT:
            members = types[pointee][1:]
            push = [(offsets[pointee][m], name(t)) for m, t in enumerate(members)]
        elif sc in (SC_STORAGE_BUFFER, SC_UNIFORM) and decor.get((var, DEC_DESCRIPTOR_SET), 0) == 0:
            count = 1
            if types[pointee][0] == "array":  # an array of windows
                count, pointee = consts[types[pointee][2]], types[pointee][1]
            b = decor[(var, DEC_BINDING)]
            bindings[b] = max(bindings.get(b, 0), count)  # aliased declarations of one binding
            first = types[types[pointee][1]]
            if b == 0 and first[0] == "array":
                meta = consts[first[2]]
    return Interface(local, push, dict(sorted(bindings.items())), meta)
