// What nvcc's <mma.h> gives the kernels, on the emulated device.
#pragma once
#include "icet_emu.h"
