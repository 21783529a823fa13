// One include for the whole public C++ API of ompq_ext's core.
#pragma once

#include "ompq/gram.hpp"
#include "ompq/orthogonality.hpp"
#include "ompq/version.hpp"
