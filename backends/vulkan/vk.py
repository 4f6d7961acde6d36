"""A cffi ABI binding of the subset of Vulkan 1.1 that the backend uses, over libvulkan.so.1.

Why our own binding rather than the `vulkan` package from PyPI: we call ~45 entry points and
~35 structs, all declared below (the declarations follow vulkan_core.h field for field; a test
compiles the real header, where present, and compares every size and offset). The package wraps
the whole API in generated Python (its import parses the full header, a second or more, and its
per-call wrappers build structs from keyword arguments), has known holes (a dropped
vkGetBufferDeviceAddress result, missing 1.2 enums) and would be one more pinned dependency;
cffi is already one of graphir's (the native cpu backend). Hot paths (submit, fence wait) call
`lib` directly with structs prepared at lower time.

`load()` returns (ffi, lib) or a string saying why the loader cannot be used; nothing here
raises at import time.
"""

from __future__ import annotations

import cffi

CDEF = """
typedef uint32_t VkFlags;
typedef uint32_t VkBool32;
typedef uint64_t VkDeviceSize;
typedef int32_t VkResult;
typedef int32_t VkStructureType;
typedef struct VkInstance_T* VkInstance;
typedef struct VkPhysicalDevice_T* VkPhysicalDevice;
typedef struct VkDevice_T* VkDevice;
typedef struct VkQueue_T* VkQueue;
typedef struct VkCommandBuffer_T* VkCommandBuffer;
typedef struct VkBuffer_T* VkBuffer;
typedef struct VkDeviceMemory_T* VkDeviceMemory;
typedef struct VkShaderModule_T* VkShaderModule;
typedef struct VkPipeline_T* VkPipeline;
typedef struct VkPipelineLayout_T* VkPipelineLayout;
typedef struct VkPipelineCache_T* VkPipelineCache;
typedef struct VkDescriptorSetLayout_T* VkDescriptorSetLayout;
typedef struct VkDescriptorPool_T* VkDescriptorPool;
typedef struct VkDescriptorSet_T* VkDescriptorSet;
typedef struct VkCommandPool_T* VkCommandPool;
typedef struct VkFence_T* VkFence;
typedef struct VkSemaphore_T* VkSemaphore;
typedef struct VkSampler_T* VkSampler;
typedef struct VkBufferView_T* VkBufferView;
typedef struct VkQueryPool_T* VkQueryPool;

typedef struct VkApplicationInfo {
    VkStructureType sType; const void* pNext; const char* pApplicationName; uint32_t applicationVersion;
    const char* pEngineName; uint32_t engineVersion; uint32_t apiVersion;
} VkApplicationInfo;
typedef struct VkInstanceCreateInfo {
    VkStructureType sType; const void* pNext; VkFlags flags; const VkApplicationInfo* pApplicationInfo;
    uint32_t enabledLayerCount; const char* const* ppEnabledLayerNames;
    uint32_t enabledExtensionCount; const char* const* ppEnabledExtensionNames;
} VkInstanceCreateInfo;

typedef struct VkPhysicalDeviceLimits {
    uint32_t maxImageDimension1D, maxImageDimension2D, maxImageDimension3D, maxImageDimensionCube,
        maxImageArrayLayers, maxTexelBufferElements, maxUniformBufferRange, maxStorageBufferRange,
        maxPushConstantsSize, maxMemoryAllocationCount, maxSamplerAllocationCount;
    VkDeviceSize bufferImageGranularity, sparseAddressSpaceSize;
    uint32_t maxBoundDescriptorSets, maxPerStageDescriptorSamplers, maxPerStageDescriptorUniformBuffers,
        maxPerStageDescriptorStorageBuffers, maxPerStageDescriptorSampledImages, maxPerStageDescriptorStorageImages,
        maxPerStageDescriptorInputAttachments, maxPerStageResources, maxDescriptorSetSamplers,
        maxDescriptorSetUniformBuffers, maxDescriptorSetUniformBuffersDynamic, maxDescriptorSetStorageBuffers,
        maxDescriptorSetStorageBuffersDynamic, maxDescriptorSetSampledImages, maxDescriptorSetStorageImages,
        maxDescriptorSetInputAttachments, maxVertexInputAttributes, maxVertexInputBindings,
        maxVertexInputAttributeOffset, maxVertexInputBindingStride, maxVertexOutputComponents,
        maxTessellationGenerationLevel, maxTessellationPatchSize, maxTessellationControlPerVertexInputComponents,
        maxTessellationControlPerVertexOutputComponents, maxTessellationControlPerPatchOutputComponents,
        maxTessellationControlTotalOutputComponents, maxTessellationEvaluationInputComponents,
        maxTessellationEvaluationOutputComponents, maxGeometryShaderInvocations, maxGeometryInputComponents,
        maxGeometryOutputComponents, maxGeometryOutputVertices, maxGeometryTotalOutputComponents,
        maxFragmentInputComponents, maxFragmentOutputAttachments, maxFragmentDualSrcAttachments,
        maxFragmentCombinedOutputResources, maxComputeSharedMemorySize;
    uint32_t maxComputeWorkGroupCount[3];
    uint32_t maxComputeWorkGroupInvocations;
    uint32_t maxComputeWorkGroupSize[3];
    uint32_t subPixelPrecisionBits, subTexelPrecisionBits, mipmapPrecisionBits, maxDrawIndexedIndexValue,
        maxDrawIndirectCount;
    float maxSamplerLodBias, maxSamplerAnisotropy;
    uint32_t maxViewports;
    uint32_t maxViewportDimensions[2];
    float viewportBoundsRange[2];
    uint32_t viewportSubPixelBits;
    size_t minMemoryMapAlignment;
    VkDeviceSize minTexelBufferOffsetAlignment, minUniformBufferOffsetAlignment, minStorageBufferOffsetAlignment;
    int32_t minTexelOffset;
    uint32_t maxTexelOffset;
    int32_t minTexelGatherOffset;
    uint32_t maxTexelGatherOffset;
    float minInterpolationOffset, maxInterpolationOffset;
    uint32_t subPixelInterpolationOffsetBits, maxFramebufferWidth, maxFramebufferHeight, maxFramebufferLayers;
    VkFlags framebufferColorSampleCounts, framebufferDepthSampleCounts, framebufferStencilSampleCounts,
        framebufferNoAttachmentsSampleCounts;
    uint32_t maxColorAttachments;
    VkFlags sampledImageColorSampleCounts, sampledImageIntegerSampleCounts, sampledImageDepthSampleCounts,
        sampledImageStencilSampleCounts, storageImageSampleCounts;
    uint32_t maxSampleMaskWords;
    VkBool32 timestampComputeAndGraphics;
    float timestampPeriod;
    uint32_t maxClipDistances, maxCullDistances, maxCombinedClipAndCullDistances, discreteQueuePriorities;
    float pointSizeRange[2];
    float lineWidthRange[2];
    float pointSizeGranularity, lineWidthGranularity;
    VkBool32 strictLines, standardSampleLocations;
    VkDeviceSize optimalBufferCopyOffsetAlignment, optimalBufferCopyRowPitchAlignment, nonCoherentAtomSize;
} VkPhysicalDeviceLimits;
typedef struct VkPhysicalDeviceSparseProperties {
    VkBool32 residencyStandard2DBlockShape, residencyStandard2DMultisampleBlockShape,
        residencyStandard3DBlockShape, residencyAlignedMipSize, residencyNonResidentStrict;
} VkPhysicalDeviceSparseProperties;
typedef struct VkPhysicalDeviceProperties {
    uint32_t apiVersion, driverVersion, vendorID, deviceID;
    int32_t deviceType;
    char deviceName[256];
    uint8_t pipelineCacheUUID[16];
    VkPhysicalDeviceLimits limits;
    VkPhysicalDeviceSparseProperties sparseProperties;
} VkPhysicalDeviceProperties;
typedef struct VkPhysicalDeviceFeatures {
    VkBool32 robustBufferAccess, fullDrawIndexUint32, imageCubeArray, independentBlend, geometryShader,
        tessellationShader, sampleRateShading, dualSrcBlend, logicOp, multiDrawIndirect,
        drawIndirectFirstInstance, depthClamp, depthBiasClamp, fillModeNonSolid, depthBounds, wideLines,
        largePoints, alphaToOne, multiViewport, samplerAnisotropy, textureCompressionETC2,
        textureCompressionASTC_LDR, textureCompressionBC, occlusionQueryPrecise, pipelineStatisticsQuery,
        vertexPipelineStoresAndAtomics, fragmentStoresAndAtomics, shaderTessellationAndGeometryPointSize,
        shaderImageGatherExtended, shaderStorageImageExtendedFormats, shaderStorageImageMultisample,
        shaderStorageImageReadWithoutFormat, shaderStorageImageWriteWithoutFormat,
        shaderUniformBufferArrayDynamicIndexing, shaderSampledImageArrayDynamicIndexing,
        shaderStorageBufferArrayDynamicIndexing, shaderStorageImageArrayDynamicIndexing, shaderClipDistance,
        shaderCullDistance, shaderFloat64, shaderInt64, shaderInt16, shaderResourceResidency,
        shaderResourceMinLod, sparseBinding, sparseResidencyBuffer, sparseResidencyImage2D,
        sparseResidencyImage3D, sparseResidency2Samples, sparseResidency4Samples, sparseResidency8Samples,
        sparseResidency16Samples, sparseResidencyAliased, variableMultisampleRate, inheritedQueries;
} VkPhysicalDeviceFeatures;
typedef struct VkExtent3D { uint32_t width, height, depth; } VkExtent3D;
typedef struct VkQueueFamilyProperties {
    VkFlags queueFlags; uint32_t queueCount; uint32_t timestampValidBits; VkExtent3D minImageTransferGranularity;
} VkQueueFamilyProperties;
typedef struct VkMemoryType { VkFlags propertyFlags; uint32_t heapIndex; } VkMemoryType;
typedef struct VkMemoryHeap { VkDeviceSize size; VkFlags flags; } VkMemoryHeap;
typedef struct VkPhysicalDeviceMemoryProperties {
    uint32_t memoryTypeCount; VkMemoryType memoryTypes[32]; uint32_t memoryHeapCount; VkMemoryHeap memoryHeaps[16];
} VkPhysicalDeviceMemoryProperties;

typedef struct VkDeviceQueueCreateInfo {
    VkStructureType sType; const void* pNext; VkFlags flags; uint32_t queueFamilyIndex; uint32_t queueCount;
    const float* pQueuePriorities;
} VkDeviceQueueCreateInfo;
typedef struct VkDeviceCreateInfo {
    VkStructureType sType; const void* pNext; VkFlags flags;
    uint32_t queueCreateInfoCount; const VkDeviceQueueCreateInfo* pQueueCreateInfos;
    uint32_t enabledLayerCount; const char* const* ppEnabledLayerNames;
    uint32_t enabledExtensionCount; const char* const* ppEnabledExtensionNames;
    const VkPhysicalDeviceFeatures* pEnabledFeatures;
} VkDeviceCreateInfo;

typedef struct VkBufferCreateInfo {
    VkStructureType sType; const void* pNext; VkFlags flags; VkDeviceSize size; VkFlags usage;
    int32_t sharingMode; uint32_t queueFamilyIndexCount; const uint32_t* pQueueFamilyIndices;
} VkBufferCreateInfo;
typedef struct VkMemoryRequirements { VkDeviceSize size; VkDeviceSize alignment; uint32_t memoryTypeBits; }
    VkMemoryRequirements;
typedef struct VkMemoryAllocateInfo {
    VkStructureType sType; const void* pNext; VkDeviceSize allocationSize; uint32_t memoryTypeIndex;
} VkMemoryAllocateInfo;

typedef struct VkShaderModuleCreateInfo {
    VkStructureType sType; const void* pNext; VkFlags flags; size_t codeSize; const uint32_t* pCode;
} VkShaderModuleCreateInfo;
typedef struct VkDescriptorSetLayoutBinding {
    uint32_t binding; int32_t descriptorType; uint32_t descriptorCount; VkFlags stageFlags;
    const VkSampler* pImmutableSamplers;
} VkDescriptorSetLayoutBinding;
typedef struct VkDescriptorSetLayoutCreateInfo {
    VkStructureType sType; const void* pNext; VkFlags flags; uint32_t bindingCount;
    const VkDescriptorSetLayoutBinding* pBindings;
} VkDescriptorSetLayoutCreateInfo;
typedef struct VkPushConstantRange { VkFlags stageFlags; uint32_t offset; uint32_t size; } VkPushConstantRange;
typedef struct VkPipelineLayoutCreateInfo {
    VkStructureType sType; const void* pNext; VkFlags flags; uint32_t setLayoutCount;
    const VkDescriptorSetLayout* pSetLayouts; uint32_t pushConstantRangeCount;
    const VkPushConstantRange* pPushConstantRanges;
} VkPipelineLayoutCreateInfo;
typedef struct VkSpecializationMapEntry { uint32_t constantID; uint32_t offset; size_t size; }
    VkSpecializationMapEntry;
typedef struct VkSpecializationInfo {
    uint32_t mapEntryCount; const VkSpecializationMapEntry* pMapEntries; size_t dataSize; const void* pData;
} VkSpecializationInfo;
typedef struct VkPipelineShaderStageCreateInfo {
    VkStructureType sType; const void* pNext; VkFlags flags; VkFlags stage; VkShaderModule module;
    const char* pName; const VkSpecializationInfo* pSpecializationInfo;
} VkPipelineShaderStageCreateInfo;
typedef struct VkComputePipelineCreateInfo {
    VkStructureType sType; const void* pNext; VkFlags flags; VkPipelineShaderStageCreateInfo stage;
    VkPipelineLayout layout; VkPipeline basePipelineHandle; int32_t basePipelineIndex;
} VkComputePipelineCreateInfo;
typedef struct VkPipelineCacheCreateInfo {
    VkStructureType sType; const void* pNext; VkFlags flags; size_t initialDataSize; const void* pInitialData;
} VkPipelineCacheCreateInfo;

typedef struct VkDescriptorPoolSize { int32_t type; uint32_t descriptorCount; } VkDescriptorPoolSize;
typedef struct VkDescriptorPoolCreateInfo {
    VkStructureType sType; const void* pNext; VkFlags flags; uint32_t maxSets; uint32_t poolSizeCount;
    const VkDescriptorPoolSize* pPoolSizes;
} VkDescriptorPoolCreateInfo;
typedef struct VkDescriptorSetAllocateInfo {
    VkStructureType sType; const void* pNext; VkDescriptorPool descriptorPool; uint32_t descriptorSetCount;
    const VkDescriptorSetLayout* pSetLayouts;
} VkDescriptorSetAllocateInfo;
typedef struct VkDescriptorBufferInfo { VkBuffer buffer; VkDeviceSize offset; VkDeviceSize range; }
    VkDescriptorBufferInfo;
typedef struct VkWriteDescriptorSet {
    VkStructureType sType; const void* pNext; VkDescriptorSet dstSet; uint32_t dstBinding;
    uint32_t dstArrayElement; uint32_t descriptorCount; int32_t descriptorType; const void* pImageInfo;
    const VkDescriptorBufferInfo* pBufferInfo; const VkBufferView* pTexelBufferView;
} VkWriteDescriptorSet;

typedef struct VkCommandPoolCreateInfo {
    VkStructureType sType; const void* pNext; VkFlags flags; uint32_t queueFamilyIndex;
} VkCommandPoolCreateInfo;
typedef struct VkCommandBufferAllocateInfo {
    VkStructureType sType; const void* pNext; VkCommandPool commandPool; int32_t level;
    uint32_t commandBufferCount;
} VkCommandBufferAllocateInfo;
typedef struct VkCommandBufferBeginInfo {
    VkStructureType sType; const void* pNext; VkFlags flags; const void* pInheritanceInfo;
} VkCommandBufferBeginInfo;
typedef struct VkMemoryBarrier {
    VkStructureType sType; const void* pNext; VkFlags srcAccessMask; VkFlags dstAccessMask;
} VkMemoryBarrier;
typedef struct VkBufferCopy { VkDeviceSize srcOffset; VkDeviceSize dstOffset; VkDeviceSize size; } VkBufferCopy;
typedef struct VkSubmitInfo {
    VkStructureType sType; const void* pNext; uint32_t waitSemaphoreCount; const VkSemaphore* pWaitSemaphores;
    const VkFlags* pWaitDstStageMask; uint32_t commandBufferCount; const VkCommandBuffer* pCommandBuffers;
    uint32_t signalSemaphoreCount; const VkSemaphore* pSignalSemaphores;
} VkSubmitInfo;
typedef struct VkFenceCreateInfo { VkStructureType sType; const void* pNext; VkFlags flags; } VkFenceCreateInfo;
typedef struct VkQueryPoolCreateInfo {
    VkStructureType sType; const void* pNext; VkFlags flags; int32_t queryType; uint32_t queryCount;
    VkFlags pipelineStatistics;
} VkQueryPoolCreateInfo;

VkResult vkEnumerateInstanceVersion(uint32_t* pApiVersion);
VkResult vkCreateInstance(const VkInstanceCreateInfo* pCreateInfo, const void* pAllocator, VkInstance* pInstance);
void vkDestroyInstance(VkInstance instance, const void* pAllocator);
VkResult vkEnumeratePhysicalDevices(VkInstance instance, uint32_t* pCount, VkPhysicalDevice* pDevices);
void vkGetPhysicalDeviceProperties(VkPhysicalDevice physicalDevice, VkPhysicalDeviceProperties* pProperties);
void vkGetPhysicalDeviceFeatures(VkPhysicalDevice physicalDevice, VkPhysicalDeviceFeatures* pFeatures);
void vkGetPhysicalDeviceQueueFamilyProperties(VkPhysicalDevice physicalDevice, uint32_t* pCount,
                                              VkQueueFamilyProperties* pProperties);
void vkGetPhysicalDeviceMemoryProperties(VkPhysicalDevice physicalDevice,
                                         VkPhysicalDeviceMemoryProperties* pMemoryProperties);
VkResult vkCreateDevice(VkPhysicalDevice physicalDevice, const VkDeviceCreateInfo* pCreateInfo,
                        const void* pAllocator, VkDevice* pDevice);
void vkDestroyDevice(VkDevice device, const void* pAllocator);
void vkGetDeviceQueue(VkDevice device, uint32_t queueFamilyIndex, uint32_t queueIndex, VkQueue* pQueue);
VkResult vkDeviceWaitIdle(VkDevice device);

VkResult vkCreateBuffer(VkDevice device, const VkBufferCreateInfo* pCreateInfo, const void* pAllocator,
                        VkBuffer* pBuffer);
void vkDestroyBuffer(VkDevice device, VkBuffer buffer, const void* pAllocator);
void vkGetBufferMemoryRequirements(VkDevice device, VkBuffer buffer, VkMemoryRequirements* pMemoryRequirements);
VkResult vkAllocateMemory(VkDevice device, const VkMemoryAllocateInfo* pAllocateInfo, const void* pAllocator,
                          VkDeviceMemory* pMemory);
void vkFreeMemory(VkDevice device, VkDeviceMemory memory, const void* pAllocator);
VkResult vkBindBufferMemory(VkDevice device, VkBuffer buffer, VkDeviceMemory memory, VkDeviceSize memoryOffset);
VkResult vkMapMemory(VkDevice device, VkDeviceMemory memory, VkDeviceSize offset, VkDeviceSize size,
                     VkFlags flags, void** ppData);
void vkUnmapMemory(VkDevice device, VkDeviceMemory memory);

VkResult vkCreateShaderModule(VkDevice device, const VkShaderModuleCreateInfo* pCreateInfo, const void* pAllocator,
                              VkShaderModule* pShaderModule);
void vkDestroyShaderModule(VkDevice device, VkShaderModule shaderModule, const void* pAllocator);
VkResult vkCreateDescriptorSetLayout(VkDevice device, const VkDescriptorSetLayoutCreateInfo* pCreateInfo,
                                     const void* pAllocator, VkDescriptorSetLayout* pSetLayout);
void vkDestroyDescriptorSetLayout(VkDevice device, VkDescriptorSetLayout layout, const void* pAllocator);
VkResult vkCreatePipelineLayout(VkDevice device, const VkPipelineLayoutCreateInfo* pCreateInfo,
                                const void* pAllocator, VkPipelineLayout* pPipelineLayout);
void vkDestroyPipelineLayout(VkDevice device, VkPipelineLayout layout, const void* pAllocator);
VkResult vkCreatePipelineCache(VkDevice device, const VkPipelineCacheCreateInfo* pCreateInfo,
                               const void* pAllocator, VkPipelineCache* pPipelineCache);
VkResult vkGetPipelineCacheData(VkDevice device, VkPipelineCache pipelineCache, size_t* pDataSize, void* pData);
void vkDestroyPipelineCache(VkDevice device, VkPipelineCache pipelineCache, const void* pAllocator);
VkResult vkCreateComputePipelines(VkDevice device, VkPipelineCache pipelineCache, uint32_t createInfoCount,
                                  const VkComputePipelineCreateInfo* pCreateInfos, const void* pAllocator,
                                  VkPipeline* pPipelines);
void vkDestroyPipeline(VkDevice device, VkPipeline pipeline, const void* pAllocator);

VkResult vkCreateDescriptorPool(VkDevice device, const VkDescriptorPoolCreateInfo* pCreateInfo,
                                const void* pAllocator, VkDescriptorPool* pDescriptorPool);
void vkDestroyDescriptorPool(VkDevice device, VkDescriptorPool descriptorPool, const void* pAllocator);
VkResult vkAllocateDescriptorSets(VkDevice device, const VkDescriptorSetAllocateInfo* pAllocateInfo,
                                  VkDescriptorSet* pDescriptorSets);
void vkUpdateDescriptorSets(VkDevice device, uint32_t writeCount, const VkWriteDescriptorSet* pWrites,
                            uint32_t copyCount, const void* pCopies);

VkResult vkCreateCommandPool(VkDevice device, const VkCommandPoolCreateInfo* pCreateInfo, const void* pAllocator,
                             VkCommandPool* pCommandPool);
void vkDestroyCommandPool(VkDevice device, VkCommandPool commandPool, const void* pAllocator);
VkResult vkAllocateCommandBuffers(VkDevice device, const VkCommandBufferAllocateInfo* pAllocateInfo,
                                  VkCommandBuffer* pCommandBuffers);
void vkFreeCommandBuffers(VkDevice device, VkCommandPool commandPool, uint32_t count,
                          const VkCommandBuffer* pCommandBuffers);
VkResult vkBeginCommandBuffer(VkCommandBuffer commandBuffer, const VkCommandBufferBeginInfo* pBeginInfo);
VkResult vkEndCommandBuffer(VkCommandBuffer commandBuffer);
void vkCmdBindPipeline(VkCommandBuffer commandBuffer, int32_t bindPoint, VkPipeline pipeline);
void vkCmdBindDescriptorSets(VkCommandBuffer commandBuffer, int32_t bindPoint, VkPipelineLayout layout,
                             uint32_t firstSet, uint32_t setCount, const VkDescriptorSet* pSets,
                             uint32_t dynamicOffsetCount, const uint32_t* pDynamicOffsets);
void vkCmdPushConstants(VkCommandBuffer commandBuffer, VkPipelineLayout layout, VkFlags stageFlags,
                        uint32_t offset, uint32_t size, const void* pValues);
void vkCmdDispatch(VkCommandBuffer commandBuffer, uint32_t x, uint32_t y, uint32_t z);
void vkCmdPipelineBarrier(VkCommandBuffer commandBuffer, VkFlags srcStageMask, VkFlags dstStageMask,
                          VkFlags dependencyFlags, uint32_t memoryBarrierCount, const VkMemoryBarrier* pMemoryBarriers,
                          uint32_t bufferMemoryBarrierCount, const void* pBufferMemoryBarriers,
                          uint32_t imageMemoryBarrierCount, const void* pImageMemoryBarriers);
void vkCmdCopyBuffer(VkCommandBuffer commandBuffer, VkBuffer srcBuffer, VkBuffer dstBuffer, uint32_t regionCount,
                     const VkBufferCopy* pRegions);
void vkCmdResetQueryPool(VkCommandBuffer commandBuffer, VkQueryPool queryPool, uint32_t firstQuery,
                         uint32_t queryCount);
void vkCmdWriteTimestamp(VkCommandBuffer commandBuffer, VkFlags pipelineStage, VkQueryPool queryPool,
                         uint32_t query);

VkResult vkQueueSubmit(VkQueue queue, uint32_t submitCount, const VkSubmitInfo* pSubmits, VkFence fence);
VkResult vkCreateFence(VkDevice device, const VkFenceCreateInfo* pCreateInfo, const void* pAllocator,
                       VkFence* pFence);
void vkDestroyFence(VkDevice device, VkFence fence, const void* pAllocator);
VkResult vkWaitForFences(VkDevice device, uint32_t fenceCount, const VkFence* pFences, VkBool32 waitAll,
                         uint64_t timeout);
VkResult vkResetFences(VkDevice device, uint32_t fenceCount, const VkFence* pFences);
VkResult vkCreateQueryPool(VkDevice device, const VkQueryPoolCreateInfo* pCreateInfo, const void* pAllocator,
                           VkQueryPool* pQueryPool);
void vkDestroyQueryPool(VkDevice device, VkQueryPool queryPool, const void* pAllocator);
VkResult vkGetQueryPoolResults(VkDevice device, VkQueryPool queryPool, uint32_t firstQuery, uint32_t queryCount,
                               size_t dataSize, void* pData, VkDeviceSize stride, VkFlags flags);
"""

# the structs whose sizes and field offsets the layout test checks against vulkan_core.h
STRUCTS = [line.split()[2] for line in CDEF.splitlines() if line.startswith("typedef struct") and "{" in line]

# ---- constants (vulkan_core.h) -----------------------------------------------------------

SUCCESS, NOT_READY, TIMEOUT = 0, 1, 2
ST_APPLICATION_INFO, ST_INSTANCE_CREATE_INFO, ST_DEVICE_QUEUE_CREATE_INFO, ST_DEVICE_CREATE_INFO = 0, 1, 2, 3
ST_SUBMIT_INFO, ST_MEMORY_ALLOCATE_INFO, ST_FENCE_CREATE_INFO, ST_QUERY_POOL_CREATE_INFO = 4, 5, 8, 11
ST_BUFFER_CREATE_INFO, ST_SHADER_MODULE_CREATE_INFO, ST_PIPELINE_CACHE_CREATE_INFO = 12, 16, 17
ST_PIPELINE_SHADER_STAGE_CREATE_INFO, ST_COMPUTE_PIPELINE_CREATE_INFO, ST_PIPELINE_LAYOUT_CREATE_INFO = 18, 29, 30
ST_DESCRIPTOR_SET_LAYOUT_CREATE_INFO, ST_DESCRIPTOR_POOL_CREATE_INFO, ST_DESCRIPTOR_SET_ALLOCATE_INFO = 32, 33, 34
ST_WRITE_DESCRIPTOR_SET, ST_COMMAND_POOL_CREATE_INFO, ST_COMMAND_BUFFER_ALLOCATE_INFO = 35, 39, 40
ST_COMMAND_BUFFER_BEGIN_INFO, ST_MEMORY_BARRIER = 42, 46

DEVICE_TYPE = {0: "other", 1: "integrated", 2: "discrete", 3: "virtual", 4: "cpu"}
QUEUE_COMPUTE = 0x2
MEMORY_DEVICE_LOCAL, MEMORY_HOST_VISIBLE, MEMORY_HOST_COHERENT, MEMORY_HOST_CACHED = 0x1, 0x2, 0x4, 0x8
BUFFER_USAGE_TRANSFER_SRC, BUFFER_USAGE_TRANSFER_DST, BUFFER_USAGE_STORAGE = 0x1, 0x2, 0x20
DESCRIPTOR_STORAGE_BUFFER = 7
SHADER_STAGE_COMPUTE = 0x20
BIND_POINT_COMPUTE = 1
COMMAND_BUFFER_LEVEL_PRIMARY = 0
COMMAND_POOL_RESET_COMMAND_BUFFER = 0x2
COMMAND_BUFFER_ONE_TIME_SUBMIT = 0x1
DESCRIPTOR_POOL_FREE_DESCRIPTOR_SET = 0x1
ACCESS_SHADER_READ, ACCESS_SHADER_WRITE = 0x20, 0x40
ACCESS_TRANSFER_READ, ACCESS_TRANSFER_WRITE, ACCESS_HOST_READ, ACCESS_HOST_WRITE = 0x800, 0x1000, 0x2000, 0x4000
STAGE_TOP_OF_PIPE, STAGE_COMPUTE, STAGE_TRANSFER, STAGE_BOTTOM_OF_PIPE, STAGE_HOST = 0x1, 0x800, 0x1000, 0x2000, 0x4000
QUERY_TYPE_TIMESTAMP = 2
QUERY_RESULT_64, QUERY_RESULT_WAIT = 0x1, 0x2
INSTANCE_ENUMERATE_PORTABILITY = 0x1
SHARING_EXCLUSIVE = 0
WHOLE_SIZE = (1 << 64) - 1
NO_TIMEOUT = (1 << 64) - 1


def api_version(major: int, minor: int, patch: int = 0) -> int:
    return (major << 22) | (minor << 12) | patch


def version_str(v: int) -> str:
    return f"{(v >> 22) & 0x7F}.{(v >> 12) & 0x3FF}.{v & 0xFFF}"


class VulkanError(RuntimeError):
    """A Vulkan call failed; the message names the call and the VkResult."""


_RESULTS = {-1: "OUT_OF_HOST_MEMORY", -2: "OUT_OF_DEVICE_MEMORY", -3: "INITIALIZATION_FAILED", -4: "DEVICE_LOST",
            -5: "MEMORY_MAP_FAILED", -7: "EXTENSION_NOT_PRESENT", -8: "FEATURE_NOT_PRESENT",
            -9: "INCOMPATIBLE_DRIVER", -10: "TOO_MANY_OBJECTS", -13: "UNKNOWN", -1000069000: "OUT_OF_POOL_MEMORY",
            1: "NOT_READY", 2: "TIMEOUT"}  # fmt: skip


def check(result: int, what: str) -> None:
    """Raise VulkanError unless result is VK_SUCCESS."""
    if result != SUCCESS:
        raise VulkanError(f"[vulkan] {what} failed: VK_{_RESULTS.get(result, 'ERROR')} ({result})")


_loaded: tuple | str | None = None


def load():
    """(ffi, lib) over libvulkan.so.1, or a string saying why it cannot be loaded (cached)."""
    global _loaded
    if _loaded is None:
        ffi = cffi.FFI()
        ffi.cdef(CDEF)
        try:
            lib = ffi.dlopen("libvulkan.so.1")
        except OSError as e:
            _loaded = f"the Vulkan loader libvulkan.so.1 is missing ({e}); install Debian's libvulkan1"
        else:
            _loaded = (ffi, lib)
    return _loaded
