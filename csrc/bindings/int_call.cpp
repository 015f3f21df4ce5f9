// The vectorcall entry of int_call.h's functions: argument parsing, the GIL, exceptions.
#include "bindings/int_call.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <new>
#include <stdexcept>
#include <vector>

namespace tersor::bindings::int_call {
namespace {

constexpr const char* kCapsule = "tersor.int_call";

// What every callable of one kernel shares (its partials too): names and types.
struct Signature {
  std::string name;
  std::vector<std::string> args;
  uint32_t bools = 0;  // bit i: argument i is a bool
};

// One callable: what a call reads sits in this one block (~4 cache lines), the argument
// values included (defaults, and what int_partial bound).
struct Function {
  PyMethodDef def{};
  Erased fn = nullptr;
  Invoker invoker = nullptr;
  int n = 0, n_order = 0;
  uint32_t has_value = 0, bound = 0;  // bit i: values[i] holds a default / a bound value
  uint8_t order[kMaxArgs] = {};       // the arguments positional calls fill, in order
  int64_t values[kMaxArgs] = {};
  std::shared_ptr<const Signature> sig;
  std::string doc;
};

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(' ');
  const auto e = s.find_last_not_of(' ');
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

// "a, b=0, c: bool=False" -> the names, defaults and the signature line pybind11 would write.
std::string parse_spec(Function& f, Signature& sig, const char* spec) {
  std::string line = sig.name + "(", rest = spec;
  while (!rest.empty()) {
    const auto comma = rest.find(',');
    std::string item = trim(rest.substr(0, comma));
    rest = comma == std::string::npos ? std::string() : rest.substr(comma + 1);
    std::string type = "int", dflt;
    if (const auto eq = item.find('='); eq != std::string::npos) {
      dflt = trim(item.substr(eq + 1));
      item = trim(item.substr(0, eq));
    }
    if (const auto colon = item.find(':'); colon != std::string::npos) {
      type = trim(item.substr(colon + 1));
      item = trim(item.substr(0, colon));
    }
    const int i = f.n++;
    if (i == kMaxArgs) throw std::logic_error(sig.name + ": raise int_call::kMaxArgs");
    sig.args.push_back(item);
    if (type == "bool") sig.bools |= 1u << i;
    f.order[f.n_order++] = static_cast<uint8_t>(i);
    if (!dflt.empty()) {
      f.has_value |= 1u << i;
      f.values[i] = dflt == "True" ? 1 : dflt == "False" ? 0 : std::stoll(dflt);
    }
    line += (i ? ", " : "") + item + ": " + type + (dflt.empty() ? "" : " = " + dflt);
  }
  return line + ") -> None";
}

PyObject* fail(PyObject* type, const Function& f, const std::string& what) {
  PyErr_SetString(type, (f.sig->name + "(): " + what).c_str());
  return nullptr;
}

// One argument as int64 (addresses above 2^63 as their two's complement): ints, bools and
// objects with __index__ (numpy integers), as pybind11's int caster takes them, floats not; a
// bool argument also takes what has a truth value (numpy.bool_), as pybind11's bool caster.
bool read(const Function& f, int i, PyObject* o, int64_t* out) {
  int overflow = 0;
  long long v = 0;
  if ((f.sig->bools >> i & 1) && !PyLong_Check(o)) {
    const int truth = PyObject_IsTrue(o);
    if (truth < 0) return false;
    out[i] = truth;
    return true;
  }
  if (PyLong_Check(o)) {
    v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow > 0) v = static_cast<long long>(PyLong_AsUnsignedLongLong(o));
  } else if (PyObject* n = PyNumber_Index(o); n != nullptr) {
    v = PyLong_AsLongLongAndOverflow(n, &overflow);
    if (overflow > 0) v = static_cast<long long>(PyLong_AsUnsignedLongLong(n));
    Py_DECREF(n);
  } else {
    PyErr_Clear();
    fail(PyExc_TypeError, f,
         "argument '" + f.sig->args[i] + "' must be an int, got " + Py_TYPE(o)->tp_name);
    return false;
  }
  if (overflow < 0 || (v == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    fail(PyExc_OverflowError, f, "argument '" + f.sig->args[i] + "' does not fit in 64 bits");
    return false;
  }
  out[i] = v;
  return true;
}

PyObject* call(PyObject* self, PyObject* const* args, Py_ssize_t nargsf, PyObject* kwnames) {
  const auto* f = static_cast<const Function*>(PyCapsule_GetPointer(self, kCapsule));
  if (f == nullptr) return nullptr;
  const auto npos = PyVectorcall_NARGS(nargsf);
  if (npos > f->n_order) {
    return fail(PyExc_TypeError, *f,
                "takes " + std::to_string(f->n_order) + " arguments, got " +
                    std::to_string(npos));
  }
  int64_t v[kMaxArgs];
  uint32_t given = 0;
  for (Py_ssize_t j = 0; j < npos; ++j) {
    const int i = f->order[j];
    if (!read(*f, i, args[j], v)) return nullptr;
    given |= 1u << i;
  }
  const Py_ssize_t nkw = kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames);
  for (Py_ssize_t j = 0; j < nkw; ++j) {
    const char* key = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kwnames, j));
    if (key == nullptr) return nullptr;
    const auto& names = f->sig->args;
    int i = 0;
    while (i < f->n && names[i] != key) ++i;
    if (i == f->n) return fail(PyExc_TypeError, *f, std::string("no argument named '") + key + "'");
    if (f->bound >> i & 1) return fail(PyExc_TypeError, *f, "argument '" + names[i] + "' is bound");
    if (given >> i & 1) return fail(PyExc_TypeError, *f, "argument '" + names[i] + "' given twice");
    if (!read(*f, i, args[npos + j], v)) return nullptr;
    given |= 1u << i;
  }
  for (int i = 0; i < f->n; ++i) {
    if (given >> i & 1) continue;
    if (!(f->has_value >> i & 1)) {
      return fail(PyExc_TypeError, *f, "missing '" + f->sig->args[i] + "'");
    }
    v[i] = f->values[i];
  }
  PyObject* error = nullptr;  // pybind11's translation of the standard exceptions
  std::string message;
  Py_BEGIN_ALLOW_THREADS;
  try {
    f->invoker(f->fn, v);
  } catch (const std::bad_alloc&) {
    error = PyExc_MemoryError;
  } catch (const std::out_of_range& e) {
    error = PyExc_IndexError, message = e.what();
  } catch (const std::overflow_error& e) {
    error = PyExc_OverflowError, message = e.what();
  } catch (const std::logic_error& e) {  // invalid_argument, domain_error, length_error
    error = PyExc_ValueError, message = e.what();
  } catch (const std::range_error& e) {
    error = PyExc_ValueError, message = e.what();
  } catch (const std::exception& e) {
    error = PyExc_RuntimeError, message = e.what();
  }
  Py_END_ALLOW_THREADS;
  if (error != nullptr) {
    PyErr_SetString(error, message.c_str());
    return nullptr;
  }
  Py_RETURN_NONE;
}

void free_function(PyObject* capsule) {
  delete static_cast<Function*>(PyCapsule_GetPointer(capsule, kCapsule));
}

// The Python function of f (which it then owns).
py::object function_object(std::unique_ptr<Function> f, PyObject* module_name) {
  f->def = {f->sig->name.c_str(),
            reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&call)),
            METH_FASTCALL | METH_KEYWORDS, f->doc.c_str()};
  PyMethodDef* def = &f->def;
  py::object self =
      py::reinterpret_steal<py::object>(PyCapsule_New(f.get(), kCapsule, &free_function));
  if (!self) throw py::error_already_set();
  f.release();
  py::object fn =
      py::reinterpret_steal<py::object>(PyCFunction_NewEx(def, self.ptr(), module_name));
  if (!fn) throw py::error_already_set();
  return fn;
}

// int_partial(fn, **bound): see int_call.h.
py::object partial(const py::object& fn, const py::kwargs& bound) {
  PyObject* self = PyCFunction_Check(fn.ptr()) ? PyCFunction_GET_SELF(fn.ptr()) : nullptr;
  if (self == nullptr || !PyCapsule_IsValid(self, kCapsule)) {
    throw py::type_error("int_partial: fn must be one of tersor._C's integer functions (" +
                         std::string(py::str(fn)) + ")");
  }
  const auto& base = *static_cast<const Function*>(PyCapsule_GetPointer(self, kCapsule));
  auto f = std::make_unique<Function>();
  f->fn = base.fn, f->invoker = base.invoker, f->sig = base.sig, f->n = base.n;
  f->has_value = base.has_value, f->bound = base.bound;
  std::copy(base.values, base.values + kMaxArgs, f->values);
  const auto& names = base.sig->args;
  std::string listed;
  for (const auto& [key, value] : bound) {
    const auto name = key.cast<std::string>();
    int i = 0;
    while (i < f->n && names[i] != name) ++i;
    if (i == f->n || (f->bound >> i & 1)) {
      throw py::type_error("int_partial: " + base.sig->name + "() has no unbound argument '" +
                           name + "'");
    }
    if (!read(*f, i, value.ptr(), f->values)) throw py::error_already_set();
    f->has_value |= 1u << i, f->bound |= 1u << i;
    listed += (listed.empty() ? "" : ", ") + name;
  }
  for (int i = 0; i < f->n; ++i) {
    if (!(f->bound >> i & 1)) f->order[f->n_order++] = static_cast<uint8_t>(i);
  }
  f->doc = base.sig->name + " with " + listed + " bound; the other arguments in order (see " +
           "tersor._C." + base.sig->name + ").";
  return function_object(std::move(f), fn.attr("__module__").ptr());
}

}  // namespace

void add(py::module_& m, const char* name, const char* spec, const std::string& doc, Erased fn,
         Invoker invoker, int nparams) {
  auto sig = std::make_shared<Signature>();
  sig->name = name;
  auto f = std::make_unique<Function>();
  f->doc = parse_spec(*f, *sig, spec) + "\n\n" + doc;
  if (f->n != nparams) {
    throw std::logic_error(sig->name + ": the spec names " + std::to_string(f->n) +
                           " arguments, the function takes " + std::to_string(nparams));
  }
  f->sig = std::move(sig);
  f->fn = fn;
  f->invoker = invoker;
  m.add_object(name, function_object(std::move(f), m.attr("__name__").ptr()));
}

void bind_partial(py::module_& m) {
  m.def("int_partial", &partial, py::arg("fn"),
        "fn (one of the integer functions: gemm_w4, gemm_w8a8, ...) with the keyword "
        "arguments' values bound, called with the others in order (a layer's prepared call: "
        "its weight's addresses and sizes live in one C struct, not in Python objects).");
}

}  // namespace tersor::bindings::int_call
