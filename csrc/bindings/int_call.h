// Kernels every eager layer call goes through, bound without pybind11's dispatcher.
//
// Why: their arguments are all integers (addresses, sizes, flags), and pybind11 converts each
// through its type casters: 16 arguments cost ~0.36 us a call, read straight from CPython's
// vectorcall array ~0.10 us (AMX Xeon, 2026-12-06). A small layer's whole eager overhead is
// ~3 us (#13), so this is a tenth of it, paid by every layer of every model.
//
// def_int_function(m, "name", +[](addr x, ...) {...}, "x, M, K, io=0, flag: bool=False", doc)
// binds a captureless function whose parameters are integers (addr, int64_t, int, bool), in
// the order the spec names them. Calls take positional and keyword arguments as pybind11's did,
// run the function without the GIL, and turn its C++ exceptions into the Python exceptions
// pybind11 raises for them. The docstring's first line is the signature pybind11 would write
// (tersor._stub reads it).
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "bindings/bind.h"

namespace tersor::bindings {

namespace int_call {

constexpr int kMaxArgs = 24;
using Erased = void (*)();
using Invoker = void (*)(Erased fn, const int64_t* args);

template <typename... A, std::size_t... I>
void invoke(void (*fn)(A...), const int64_t* args, std::index_sequence<I...>) {
  fn(static_cast<A>(args[I])...);
}

template <typename... A>
void invoke_erased(Erased fn, const int64_t* args) {
  invoke(reinterpret_cast<void (*)(A...)>(fn), args, std::index_sequence_for<A...>{});
}

// Registers fn as m.<name> (spec: "a, b, c=0, d: bool=False"; nparams checks it at import).
void add(py::module_& m, const char* name, const char* spec, const std::string& doc, Erased fn,
         Invoker invoker, int nparams);

// m.int_partial(fn, **bound): fn with some arguments' values bound, a new function called with
// the others in order (keywords too). A layer prepares one per kernel: its weight's addresses
// and sizes then live in one C struct, ~4 cache lines read per call, not in a dozen
// Python objects that a model's weight streaming evicts between the layer's calls.
void bind_partial(py::module_& m);

}  // namespace int_call

template <typename... A>
void def_int_function(py::module_& m, const char* name, void (*fn)(A...), const char* spec,
                      const std::string& doc) {
  static_assert(sizeof...(A) <= int_call::kMaxArgs, "raise int_call::kMaxArgs");
  int_call::add(m, name, spec, doc, reinterpret_cast<int_call::Erased>(fn),
                &int_call::invoke_erased<A...>, static_cast<int>(sizeof...(A)));
}

}  // namespace tersor::bindings
