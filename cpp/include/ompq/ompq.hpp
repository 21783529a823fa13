// One include for the whole public C++ API of ompq_ext's core.
#pragma once

#include "ompq/fake_quant.hpp"
#include "ompq/gram.hpp"
#include "ompq/knapsack.hpp"
#include "ompq/orthogonality.hpp"
#include "ompq/version.hpp"
