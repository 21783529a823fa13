#pragma once

#define OMPQ_VERSION_MAJOR 0
#define OMPQ_VERSION_MINOR 1
#define OMPQ_VERSION_PATCH 0

namespace ompq {
inline constexpr const char* version = "0.1.0";
}
