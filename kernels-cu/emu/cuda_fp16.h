// What nvcc's <cuda_fp16.h> gives the kernels, on the emulated device.
#pragma once
#include "icet_emu.h"
