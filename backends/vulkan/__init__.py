"""The Vulkan backend (GLSL compute shaders in shaders/vulkan/*.comp, glslc, our own cffi binding
of libvulkan.so.1). Importing it never fails for a missing loader, driver or compiler:
`BACKEND.availability()` says why it cannot run."""

from .backend import VulkanBackend

BACKEND = VulkanBackend

__all__ = ["BACKEND", "VulkanBackend"]
