"""Vulkan runtime: device selection, memory, pipelines and recorded command buffers.

GRAPHIR_VULKAN_DEVICE picks the device: an index into the enumerated physical devices, or a
substring of a device name. Default: the first discrete GPU, else integrated, virtual, CPU
(lavapipe), other. One VkDevice per backend instance with one compute queue; every submit
waits on a fence before it returns (Vulkan work is done when a call returns).

Memory: buffers take the device-local memory type; where that type is also host-visible and
coherent (lavapipe, integrated GPUs, resizable BAR) it stays mapped and host access is a numpy
copy, else host reads and writes go through a staging buffer and a copy command.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np

from . import shaders, vk

ENV_DEVICE = "GRAPHIR_VULKAN_DEVICE"
TYPE_RANK = {"discrete": 0, "integrated": 1, "virtual": 2, "cpu": 3, "other": 4}
REC_WORDS = 12  # uint32 words of one tensor record in the meta buffer: ne[4], nb[4], off, 3 pad (common.glsl Rec)


@dataclass(frozen=True)
class PhysicalDevice:
    handle: object  # VkPhysicalDevice
    index: int
    name: str
    type: str
    api: int
    max_storage_range: int  # bytes one storage-buffer descriptor may span
    max_push: int
    storage_align: int  # minStorageBufferOffsetAlignment
    max_groups: tuple[int, int, int]
    max_shared: int
    dynamic_indexing: bool  # shaderStorageBufferArrayDynamicIndexing: windows over large tensors
    queue_family: int | None

    def describe(self) -> str:
        return f"{self.name} ({self.type}, Vulkan {vk.version_str(self.api)})"


_lock = threading.Lock()
_instance = None
_devices: list[PhysicalDevice] | str | None = None


def physical_devices() -> list[PhysicalDevice] | str:
    """Every physical device of the one process-wide VkInstance, or why there are none."""
    global _instance, _devices
    with _lock:
        if _devices is not None:
            return _devices
        loaded = vk.load()
        if isinstance(loaded, str):
            _devices = loaded
            return _devices
        ffi, lib = loaded
        version = ffi.new("uint32_t*")
        if lib.vkEnumerateInstanceVersion(version) != vk.SUCCESS or version[0] < vk.api_version(1, 1):
            _devices = "the Vulkan loader is older than 1.1"
            return _devices
        app = ffi.new("VkApplicationInfo*", {"sType": vk.ST_APPLICATION_INFO, "apiVersion": vk.api_version(1, 1)})
        name = ffi.new("char[]", b"graphir")
        app.pApplicationName = app.pEngineName = name
        info = ffi.new("VkInstanceCreateInfo*", {"sType": vk.ST_INSTANCE_CREATE_INFO, "pApplicationInfo": app})
        inst = ffi.new("VkInstance*")
        r = lib.vkCreateInstance(info, ffi.NULL, inst)
        if r != vk.SUCCESS:
            _devices = (f"vkCreateInstance failed ({r}): no Vulkan driver found "
                        "(install Debian's mesa-vulkan-drivers for lavapipe)")  # fmt: skip
            return _devices
        _instance = inst[0]
        count = ffi.new("uint32_t*")
        lib.vkEnumeratePhysicalDevices(_instance, count, ffi.NULL)
        handles = ffi.new("VkPhysicalDevice[]", count[0])
        lib.vkEnumeratePhysicalDevices(_instance, count, handles)
        _devices = [_describe(ffi, lib, handles[i], i) for i in range(count[0])]
        if not _devices:
            _devices = "no Vulkan physical device found (install Debian's mesa-vulkan-drivers for lavapipe)"
        return _devices


def _describe(ffi, lib, handle, index: int) -> PhysicalDevice:
    props = ffi.new("VkPhysicalDeviceProperties*")
    lib.vkGetPhysicalDeviceProperties(handle, props)
    feats = ffi.new("VkPhysicalDeviceFeatures*")
    lib.vkGetPhysicalDeviceFeatures(handle, feats)
    n = ffi.new("uint32_t*")
    lib.vkGetPhysicalDeviceQueueFamilyProperties(handle, n, ffi.NULL)
    fams = ffi.new("VkQueueFamilyProperties[]", n[0])
    lib.vkGetPhysicalDeviceQueueFamilyProperties(handle, n, fams)
    family = next((i for i in range(n[0]) if fams[i].queueFlags & vk.QUEUE_COMPUTE), None)
    lim = props.limits
    return PhysicalDevice(
        handle=handle, index=index, name=ffi.string(props.deviceName).decode(errors="replace"),
        type=vk.DEVICE_TYPE.get(props.deviceType, "other"), api=props.apiVersion,
        max_storage_range=lim.maxStorageBufferRange, max_push=lim.maxPushConstantsSize,
        storage_align=max(4, int(lim.minStorageBufferOffsetAlignment)),
        max_groups=tuple(lim.maxComputeWorkGroupCount), max_shared=lim.maxComputeSharedMemorySize,
        dynamic_indexing=bool(feats.shaderStorageBufferArrayDynamicIndexing), queue_family=family,
    )  # fmt: skip


def select_device() -> PhysicalDevice | str:
    """The chosen physical device, or a string saying why none can be used."""
    if shaders.glslc() is None:
        return "glslc not found on PATH (install Debian's glslc)"
    devices = physical_devices()
    if isinstance(devices, str):
        return devices
    usable = [d for d in devices if d.api >= vk.api_version(1, 1) and d.queue_family is not None]
    want = os.environ.get(ENV_DEVICE, "").strip()
    if want.isdigit():
        i = int(want)
        if i >= len(devices):
            return f"{ENV_DEVICE}={want}: only {len(devices)} devices"
        chosen = [devices[i]]
    elif want:
        chosen = [d for d in devices if want.lower() in d.name.lower()]
        if not chosen:
            names = ", ".join(d.name for d in devices)
            return f"{ENV_DEVICE}={want!r} matches no device (have: {names})"
    else:
        chosen = sorted(usable, key=lambda d: (TYPE_RANK[d.type], d.index))
    for d in chosen:
        if d in usable:
            return d
    d = chosen[0] if chosen else devices[0]
    return f"{d.describe()} has no compute queue or is older than Vulkan 1.1"


# ---- buffers ------------------------------------------------------------------------------


class VkBuf:
    """A VkBuffer with its own memory; `mapped` is a uint8 numpy view when host-visible."""

    __slots__ = ("handle", "memory", "size", "mapped", "__weakref__")

    def __init__(self, handle, memory, size: int, mapped: np.ndarray | None) -> None:
        self.handle, self.memory, self.size, self.mapped = handle, memory, size, mapped


@dataclass
class Pipeline:
    pipeline: object
    layout: object
    set_layout: object
    counts: tuple[int, ...]  # descriptors per binding (binding 0 is the meta buffer)
    push_size: int
    key: str


@dataclass
class Arg:
    """One tensor as a shader sees it: bytes from `offset` of `buf` spanning `span` bytes."""

    buf: VkBuf
    offset: int
    span: int
    ne: tuple[int, int, int, int]
    nb: tuple[int, int, int, int]
    writes: bool = False


@dataclass
class Command:
    """One recorded dispatch: a pipeline, its tensor args, push-constant bytes, extra meta
    floats and the work-group counts."""

    pipeline: Pipeline
    args: list[Arg]
    push: bytes
    groups: tuple[int, int, int]
    extra: np.ndarray | None = None
    windows: list[int] = field(default_factory=list)  # per arg: 0 = one descriptor, else its window count


class Device:
    """A logical device with one compute queue, a command pool, a fence and the pipelines."""

    def __init__(self, pd: PhysicalDevice, staging: bool = False) -> None:
        self.ffi, self.lib = vk.load()
        ffi, lib = self.ffi, self.lib
        self.pd = pd
        self.lock = threading.RLock()
        prio = ffi.new("float*", 1.0)
        qinfo = ffi.new("VkDeviceQueueCreateInfo*", {"sType": vk.ST_DEVICE_QUEUE_CREATE_INFO,
                        "queueFamilyIndex": pd.queue_family, "queueCount": 1, "pQueuePriorities": prio})  # fmt: skip
        feats = ffi.new("VkPhysicalDeviceFeatures*")
        feats.shaderStorageBufferArrayDynamicIndexing = int(pd.dynamic_indexing)
        dinfo = ffi.new("VkDeviceCreateInfo*", {"sType": vk.ST_DEVICE_CREATE_INFO, "queueCreateInfoCount": 1,
                        "pQueueCreateInfos": qinfo, "pEnabledFeatures": feats})  # fmt: skip
        dev = ffi.new("VkDevice*")
        vk.check(lib.vkCreateDevice(pd.handle, dinfo, ffi.NULL, dev), "vkCreateDevice")
        self.device = dev[0]
        q = ffi.new("VkQueue*")
        lib.vkGetDeviceQueue(self.device, pd.queue_family, 0, q)
        self.queue = q[0]
        pinfo = ffi.new("VkCommandPoolCreateInfo*", {"sType": vk.ST_COMMAND_POOL_CREATE_INFO,
                        "flags": vk.COMMAND_POOL_RESET_COMMAND_BUFFER, "queueFamilyIndex": pd.queue_family})  # fmt: skip
        pool = ffi.new("VkCommandPool*")
        vk.check(lib.vkCreateCommandPool(self.device, pinfo, ffi.NULL, pool), "vkCreateCommandPool")
        self.cmd_pool = pool[0]
        fence = ffi.new("VkFence*")
        vk.check(lib.vkCreateFence(self.device, ffi.new("VkFenceCreateInfo*", {"sType": vk.ST_FENCE_CREATE_INFO}),
                                   ffi.NULL, fence), "vkCreateFence")  # fmt: skip
        self.fence = fence  # a VkFence[1] for the wait/reset calls
        self._mem = ffi.new("VkPhysicalDeviceMemoryProperties*")
        lib.vkGetPhysicalDeviceMemoryProperties(pd.handle, self._mem)
        self.staging = staging  # True: never map device memory (the discrete-GPU path, for tests)
        self._pipelines: dict[str, Pipeline] = {}
        self._stage: VkBuf | None = None
        self.submits = 0

    # ---- memory ----
    def _memory_type(self, bits: int, host: bool) -> int:
        """Index of the memory type for a buffer: for staging buffers host-visible coherent memory
        (cached first); else device-local memory, host-visible first unless staging is forced."""
        coherent = vk.MEMORY_HOST_VISIBLE | vk.MEMORY_HOST_COHERENT

        def rank(i: int) -> tuple:
            f = self._mem.memoryTypes[i].propertyFlags
            if host:
                return (f & coherent == coherent, bool(f & vk.MEMORY_HOST_CACHED))
            return (bool(f & vk.MEMORY_DEVICE_LOCAL), f & coherent == coherent and not self.staging)

        allowed = [i for i in range(self._mem.memoryTypeCount) if bits & (1 << i)]
        return max(allowed, key=lambda i: (rank(i), -i))

    def buffer(self, nbytes: int, host: bool = False) -> VkBuf:
        """A buffer of at least nbytes (+16 bytes of slack, so descriptor ranges rounded up to
        whole words never pass its end), mapped when its memory is host-visible."""
        ffi, lib, dev = self.ffi, self.lib, self.device
        size = (max(nbytes, 4) + 15) // 16 * 16 + 16
        usage = vk.BUFFER_USAGE_STORAGE | vk.BUFFER_USAGE_TRANSFER_SRC | vk.BUFFER_USAGE_TRANSFER_DST
        info = ffi.new("VkBufferCreateInfo*", {"sType": vk.ST_BUFFER_CREATE_INFO, "size": size, "usage": usage})
        buf = ffi.new("VkBuffer*")
        vk.check(lib.vkCreateBuffer(dev, info, ffi.NULL, buf), f"vkCreateBuffer of {size} bytes")
        req = ffi.new("VkMemoryRequirements*")
        lib.vkGetBufferMemoryRequirements(dev, buf[0], req)
        mtype = self._memory_type(req.memoryTypeBits, host)
        ainfo = ffi.new("VkMemoryAllocateInfo*", {"sType": vk.ST_MEMORY_ALLOCATE_INFO,
                        "allocationSize": req.size, "memoryTypeIndex": mtype})  # fmt: skip
        mem = ffi.new("VkDeviceMemory*")
        r = lib.vkAllocateMemory(dev, ainfo, ffi.NULL, mem)
        if r != vk.SUCCESS:
            lib.vkDestroyBuffer(dev, buf[0], ffi.NULL)
            vk.check(r, f"vkAllocateMemory of {req.size} bytes")
        vk.check(lib.vkBindBufferMemory(dev, buf[0], mem[0], 0), "vkBindBufferMemory")
        mapped = None
        flags = self._mem.memoryTypes[mtype].propertyFlags
        coherent = vk.MEMORY_HOST_VISIBLE | vk.MEMORY_HOST_COHERENT
        if flags & coherent == coherent and (host or not self.staging):
            ptr = ffi.new("void**")
            vk.check(lib.vkMapMemory(dev, mem[0], 0, size, 0, ptr), "vkMapMemory")
            mapped = np.frombuffer(ffi.buffer(ptr[0], size), dtype=np.uint8)
        out = VkBuf(buf[0], mem[0], size, mapped)
        weakref.finalize(out, _free_buffer, self, buf[0], mem[0]).atexit = False
        return out

    def write(self, buf: VkBuf, offset: int, raw: np.ndarray) -> None:
        """Copy host bytes (uint8) into buf at offset."""
        if raw.size == 0:
            return
        if buf.mapped is not None:
            buf.mapped[offset : offset + raw.size] = raw
            return
        with self.lock:  # one staging buffer per device
            stage = self._staging(raw.size)
            stage.mapped[: raw.size] = raw
            self.copy_now(stage, 0, buf, offset, raw.size)

    def read(self, buf: VkBuf, offset: int, nbytes: int) -> np.ndarray:
        """A host copy (uint8) of nbytes of buf from offset."""
        if buf.mapped is not None:
            return buf.mapped[offset : offset + nbytes].copy()
        out = np.empty(nbytes, np.uint8)
        if nbytes:
            with self.lock:
                stage = self._staging(nbytes)
                self.copy_now(buf, offset, stage, 0, nbytes)
                out[:] = stage.mapped[:nbytes]
        return out

    def _staging(self, nbytes: int) -> VkBuf:
        if self._stage is None or self._stage.size < nbytes:
            self._stage = self.buffer(max(nbytes, 1 << 20), host=True)
        return self._stage

    def copy_now(self, src: VkBuf, src_off: int, dst: VkBuf, dst_off: int, nbytes: int) -> None:
        """vkCmdCopyBuffer, submitted and waited for."""
        self.record_copy(src, src_off, dst, dst_off, nbytes)()

    def record_copy(self, src: VkBuf, src_off: int, dst: VkBuf, dst_off: int, nbytes: int) -> Recorded:
        """A prepared call that copies nbytes between two buffers of this device."""
        region = self.ffi.new("VkBufferCopy*", {"srcOffset": src_off, "dstOffset": dst_off, "size": nbytes})

        def body(cmd) -> None:
            self.lib.vkCmdCopyBuffer(cmd, src.handle, dst.handle, 1, region)

        return Recorded(self, body, keep=(src, dst), stages=vk.STAGE_TRANSFER)

    # ---- pipelines ----
    def pipeline(self, file: str, defines: dict[str, object], counts: tuple[int, ...], push_size: int) -> Pipeline:
        """The compute pipeline of a shader variant (compiled and created once per process)."""
        key = f"{file} {' '.join(shaders.define_args(defines))}"
        p = self._pipelines.get(key)
        if p is not None:
            return p
        ffi, lib, dev = self.ffi, self.lib, self.device
        code = shaders.compile_spirv(file, defines)
        words = ffi.new("uint32_t[]", len(code) // 4)
        ffi.memmove(words, code, len(code))
        minfo = ffi.new("VkShaderModuleCreateInfo*", {"sType": vk.ST_SHADER_MODULE_CREATE_INFO,
                        "codeSize": len(code), "pCode": words})  # fmt: skip
        module = ffi.new("VkShaderModule*")
        vk.check(lib.vkCreateShaderModule(dev, minfo, ffi.NULL, module), f"vkCreateShaderModule {key}")
        binds = ffi.new("VkDescriptorSetLayoutBinding[]", len(counts))
        for i, n in enumerate(counts):
            binds[i].binding, binds[i].descriptorType = i, vk.DESCRIPTOR_STORAGE_BUFFER
            binds[i].descriptorCount, binds[i].stageFlags = n, vk.SHADER_STAGE_COMPUTE
        sinfo = ffi.new("VkDescriptorSetLayoutCreateInfo*", {"sType": vk.ST_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
                        "bindingCount": len(counts), "pBindings": binds})  # fmt: skip
        set_layout = ffi.new("VkDescriptorSetLayout*")
        vk.check(lib.vkCreateDescriptorSetLayout(dev, sinfo, ffi.NULL, set_layout), "vkCreateDescriptorSetLayout")
        rng = ffi.new("VkPushConstantRange*", {"stageFlags": vk.SHADER_STAGE_COMPUTE, "size": push_size})
        linfo = ffi.new("VkPipelineLayoutCreateInfo*", {"sType": vk.ST_PIPELINE_LAYOUT_CREATE_INFO,
                        "setLayoutCount": 1, "pSetLayouts": set_layout,
                        "pushConstantRangeCount": int(push_size > 0), "pPushConstantRanges": rng})  # fmt: skip
        layout = ffi.new("VkPipelineLayout*")
        vk.check(lib.vkCreatePipelineLayout(dev, linfo, ffi.NULL, layout), "vkCreatePipelineLayout")
        entry = ffi.new("char[]", b"main")
        cinfo = ffi.new("VkComputePipelineCreateInfo*", {"sType": vk.ST_COMPUTE_PIPELINE_CREATE_INFO,
                        "stage": {"sType": vk.ST_PIPELINE_SHADER_STAGE_CREATE_INFO, "stage": vk.SHADER_STAGE_COMPUTE,
                                  "module": module[0], "pName": entry},
                        "layout": layout[0], "basePipelineIndex": -1})  # fmt: skip
        pipe = ffi.new("VkPipeline*")
        r = lib.vkCreateComputePipelines(dev, ffi.NULL, 1, cinfo, ffi.NULL, pipe)
        lib.vkDestroyShaderModule(dev, module[0], ffi.NULL)
        vk.check(r, f"vkCreateComputePipelines {key}")
        p = Pipeline(pipe[0], layout[0], set_layout[0], counts, push_size, key)
        self._pipelines[key] = p
        return p

    # ---- recording ----
    def record(self, commands: list[Command]) -> Recorded:
        """ONE command buffer with every dispatch of `commands` in order, a pipeline barrier
        before a dispatch that touches bytes an earlier one wrote (or writes bytes an earlier one
        read) since the last barrier; meta records and descriptor sets made here, once."""
        ffi, lib, dev = self.ffi, self.lib, self.device
        align = self.pd.storage_align
        # the meta buffer: each dispatch's tensor records (+ extra floats) at an aligned offset
        metas, offs, total = [], [], 0
        for c in commands:
            m = self._meta(c)
            offs.append(total)
            metas.append(m)
            total += (m.nbytes + align - 1) // align * align
        meta = self.buffer(max(total, 16))
        raw = np.zeros(total, np.uint8)
        for o, m in zip(offs, metas):
            raw[o : o + m.nbytes] = m.view(np.uint8)
        self.write(meta, 0, raw)
        n_desc = sum(sum(c.pipeline.counts) for c in commands)
        pool = ffi.new("VkDescriptorPool*")
        if commands:
            size = ffi.new("VkDescriptorPoolSize*", {"type": vk.DESCRIPTOR_STORAGE_BUFFER, "descriptorCount": n_desc})
            pinfo = ffi.new("VkDescriptorPoolCreateInfo*", {"sType": vk.ST_DESCRIPTOR_POOL_CREATE_INFO,
                            "maxSets": len(commands), "poolSizeCount": 1, "pPoolSizes": size})  # fmt: skip
            vk.check(lib.vkCreateDescriptorPool(dev, pinfo, ffi.NULL, pool), "vkCreateDescriptorPool")
            layouts = ffi.new("VkDescriptorSetLayout[]", [c.pipeline.set_layout for c in commands])
            sets = ffi.new("VkDescriptorSet[]", len(commands))
            ainfo = ffi.new("VkDescriptorSetAllocateInfo*", {"sType": vk.ST_DESCRIPTOR_SET_ALLOCATE_INFO,
                            "descriptorPool": pool[0], "descriptorSetCount": len(commands),
                            "pSetLayouts": layouts})  # fmt: skip
            vk.check(lib.vkAllocateDescriptorSets(dev, ainfo, sets), "vkAllocateDescriptorSets")
            infos = ffi.new("VkDescriptorBufferInfo[]", n_desc)
            writes = ffi.new("VkWriteDescriptorSet[]", sum(len(c.pipeline.counts) for c in commands))
            k = w = 0
            for i, c in enumerate(commands):
                ranges = [[(meta, offs[i], metas[i].nbytes)]] + [
                    self._descriptors(a, n) for a, n in zip(c.args, c.pipeline.counts[1:])
                ]
                for b, descs in enumerate(ranges):
                    wr = writes[w]
                    wr.sType, wr.dstSet, wr.dstBinding = vk.ST_WRITE_DESCRIPTOR_SET, sets[i], b
                    wr.descriptorCount, wr.descriptorType, wr.pBufferInfo = (
                        len(descs),
                        vk.DESCRIPTOR_STORAGE_BUFFER,
                        infos + k,
                    )
                    for buf, off, rng in descs:
                        infos[k].buffer, infos[k].offset, infos[k].range = buf.handle, off, rng
                        k += 1
                    w += 1
            lib.vkUpdateDescriptorSets(dev, w, writes, 0, ffi.NULL)

        def body(cmd) -> None:
            pending_w: list[tuple[int, int, int]] = []
            pending_r: list[tuple[int, int, int]] = []
            bound = None
            for i, c in enumerate(commands):
                reads = [(id(a.buf), a.offset, a.offset + a.span) for a in c.args if not a.writes]
                wrote = [(id(a.buf), a.offset, a.offset + a.span) for a in c.args if a.writes]
                if _overlap(reads + wrote, pending_w) or _overlap(wrote, pending_r):
                    self._barrier(cmd, vk.STAGE_COMPUTE, vk.STAGE_COMPUTE, vk.ACCESS_SHADER_WRITE,
                                  vk.ACCESS_SHADER_READ | vk.ACCESS_SHADER_WRITE)  # fmt: skip
                    pending_w, pending_r = [], []
                pending_w += wrote
                pending_r += reads
                p = c.pipeline
                if bound is not p:
                    lib.vkCmdBindPipeline(cmd, vk.BIND_POINT_COMPUTE, p.pipeline)
                    bound = p
                lib.vkCmdBindDescriptorSets(cmd, vk.BIND_POINT_COMPUTE, p.layout, 0, 1, sets + i, 0, ffi.NULL)
                if p.push_size:
                    lib.vkCmdPushConstants(
                        cmd, p.layout, vk.SHADER_STAGE_COMPUTE, 0, p.push_size, ffi.from_buffer(c.push)
                    )
                lib.vkCmdDispatch(cmd, *c.groups)

        keep = (meta, [c.args for c in commands], [c.pipeline for c in commands])
        rec = Recorded(self, body, keep=keep, stages=vk.STAGE_COMPUTE)
        rec.n_dispatches = len(commands)
        if commands:
            weakref.finalize(rec, _free_pool, self, pool[0]).atexit = False
        return rec

    def _meta(self, c: Command) -> np.ndarray:
        recs = np.zeros((len(c.args), REC_WORDS), np.uint32)
        for i, a in enumerate(c.args):
            recs[i, 0:4], recs[i, 4:8] = a.ne, a.nb
            recs[i, 8] = a.offset % self.pd.storage_align
        extra = np.zeros(0, np.uint32) if c.extra is None else np.asarray(c.extra, np.float32).view(np.uint32)
        return np.concatenate([recs.reshape(-1), extra])

    def window_shift(self) -> int:
        """log2 of the window stride W over tensors larger than one descriptor's range: windows
        start every W bytes and span 2W, so any access of at most W bytes lies in one window."""
        return self.pd.max_storage_range.bit_length() - 2

    def _descriptors(self, a: Arg, count: int) -> list[tuple[VkBuf, int, int]]:
        """(buffer, offset, range) of an arg's descriptor(s): its span from the aligned-down origin,
        or `count` windows over it."""
        base = a.offset - a.offset % self.pd.storage_align
        total = (a.offset - base + a.span + 3) // 4 * 4
        if count == 1:
            return [(a.buf, base, max(total, 4))]
        w = 1 << self.window_shift()
        return [(a.buf, base + i * w, max(4, min(2 * w, total - i * w))) for i in range(count)]

    def _barrier(self, cmd, src_stage: int, dst_stage: int, src_access: int, dst_access: int) -> None:
        b = self.ffi.new("VkMemoryBarrier*", {"sType": vk.ST_MEMORY_BARRIER, "srcAccessMask": src_access,
                         "dstAccessMask": dst_access})  # fmt: skip
        self.lib.vkCmdPipelineBarrier(cmd, src_stage, dst_stage, 0, 1, b, 0, self.ffi.NULL, 0, self.ffi.NULL)


def _overlap(a: list[tuple[int, int, int]], b: list[tuple[int, int, int]]) -> bool:
    return any(x[0] == y[0] and x[1] < y[2] and y[1] < x[2] for x in a for y in b)


ALL_WRITES = vk.ACCESS_SHADER_WRITE | vk.ACCESS_TRANSFER_WRITE | vk.ACCESS_HOST_WRITE
ALL_ACCESS = vk.ACCESS_SHADER_READ | vk.ACCESS_SHADER_WRITE | vk.ACCESS_TRANSFER_READ | vk.ACCESS_TRANSFER_WRITE
ALL_STAGES = vk.STAGE_COMPUTE | vk.STAGE_TRANSFER | vk.STAGE_HOST
# the (read, write) accesses each pipeline stage of a command buffer body performs
STAGE_ACCESS = {vk.STAGE_COMPUTE: (vk.ACCESS_SHADER_READ, vk.ACCESS_SHADER_WRITE),
                vk.STAGE_TRANSFER: (vk.ACCESS_TRANSFER_READ, vk.ACCESS_TRANSFER_WRITE)}  # fmt: skip


class Recorded:
    """A prepared call: a command buffer recorded once (`body` between barriers against every
    earlier and later use of memory) and re-submitted, with a fence wait, on every call."""

    def __init__(self, device: Device, body, keep: object = (), stages: int = vk.STAGE_COMPUTE) -> None:
        ffi, lib = device.ffi, device.lib
        self.device = device
        self.keep = keep  # buffers, pipelines and descriptor pools the commands use
        self.n_dispatches = 0
        cmd = ffi.new("VkCommandBuffer*")
        ainfo = ffi.new("VkCommandBufferAllocateInfo*", {"sType": vk.ST_COMMAND_BUFFER_ALLOCATE_INFO,
                        "commandPool": device.cmd_pool, "level": vk.COMMAND_BUFFER_LEVEL_PRIMARY,
                        "commandBufferCount": 1})  # fmt: skip
        with device.lock:
            vk.check(lib.vkAllocateCommandBuffers(device.device, ainfo, cmd), "vkAllocateCommandBuffers")
            weakref.finalize(self, _free_cmd, device, cmd[0]).atexit = False
            begin = ffi.new("VkCommandBufferBeginInfo*", {"sType": vk.ST_COMMAND_BUFFER_BEGIN_INFO})
            vk.check(lib.vkBeginCommandBuffer(cmd[0], begin), "vkBeginCommandBuffer")
            # host writes and other submissions' writes, then the body, then everything visible to the host
            reads, writes = STAGE_ACCESS[stages]
            device._barrier(cmd[0], ALL_STAGES, stages, ALL_WRITES, reads | writes)
            body(cmd[0])
            device._barrier(cmd[0], stages, ALL_STAGES, writes, ALL_ACCESS | vk.ACCESS_HOST_READ)
            vk.check(lib.vkEndCommandBuffer(cmd[0]), "vkEndCommandBuffer")
        self.cmd = cmd
        self.submit_info = ffi.new("VkSubmitInfo*", {"sType": vk.ST_SUBMIT_INFO, "commandBufferCount": 1,
                                   "pCommandBuffers": cmd})  # fmt: skip

    def __call__(self) -> None:
        d = self.device
        lib, dev, fence = d.lib, d.device, d.fence
        with d.lock:
            r = lib.vkQueueSubmit(d.queue, 1, self.submit_info, fence[0])
            if r == vk.SUCCESS:
                r = lib.vkWaitForFences(dev, 1, fence, 1, vk.NO_TIMEOUT)
                lib.vkResetFences(dev, 1, fence)
            d.submits += 1
        if r != vk.SUCCESS:
            vk.check(r, "vkQueueSubmit/vkWaitForFences")


def _free_buffer(device: Device, buf, mem) -> None:
    device.lib.vkDestroyBuffer(device.device, buf, device.ffi.NULL)
    device.lib.vkFreeMemory(device.device, mem, device.ffi.NULL)


def _free_cmd(device: Device, cmd) -> None:
    with device.lock:
        device.lib.vkFreeCommandBuffers(device.device, device.cmd_pool, 1, device.ffi.new("VkCommandBuffer*", cmd))


def _free_pool(device: Device, pool) -> None:
    device.lib.vkDestroyDescriptorPool(device.device, pool, device.ffi.NULL)
