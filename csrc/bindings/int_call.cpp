// The vectorcall entry of int_call.h's functions: argument parsing, the GIL, exceptions.
#include "bindings/int_call.h"

#include <memory>
#include <new>
#include <stdexcept>
#include <vector>

namespace tersor::bindings::int_call {
namespace {

constexpr const char* kCapsule = "tersor.int_call";

struct Function {
  PyMethodDef def{};
  std::string name, doc;
  std::vector<std::string> args;
  std::vector<bool> has_default, is_bool, bound;  // bound: set by int_partial, not by callers
  std::vector<int64_t> defaults;                  // (a bound argument's value too)
  std::vector<std::size_t> order;                 // the arguments positional calls fill
  Erased fn = nullptr;
  Invoker invoker = nullptr;
};

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(' ');
  const auto e = s.find_last_not_of(' ');
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

// "a, b=0, c: bool=False" -> the names, defaults and the signature line pybind11 would write.
std::string parse_spec(Function& f, const char* spec) {
  std::string sig = f.name + "(", rest = spec;
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
    f.args.push_back(item);
    f.has_default.push_back(!dflt.empty());
    f.is_bool.push_back(type == "bool");
    f.bound.push_back(false);
    f.order.push_back(f.order.size());
    f.defaults.push_back(dflt == "True"                    ? 1
                         : dflt.empty() || dflt == "False" ? 0
                                                           : std::stoll(dflt));
    sig +=
        (f.args.size() > 1 ? ", " : "") + item + ": " + type + (dflt.empty() ? "" : " = " + dflt);
  }
  return sig + ") -> None";
}

PyObject* fail(PyObject* type, const Function& f, const std::string& what) {
  PyErr_SetString(type, (f.name + "(): " + what).c_str());
  return nullptr;
}

// One argument as int64 (addresses above 2^63 as their two's complement): ints, bools and
// objects with __index__ (numpy integers), as pybind11's int caster takes them, floats not; a
// bool argument also takes what has a truth value (numpy.bool_), as pybind11's bool caster.
bool read(const Function& f, std::size_t i, PyObject* o, int64_t* out) {
  int overflow = 0;
  long long v = 0;
  if (f.is_bool[i] && !PyLong_Check(o)) {
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
         "argument '" + f.args[i] + "' must be an int, got " + Py_TYPE(o)->tp_name);
    return false;
  }
  if (overflow < 0 || (v == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    fail(PyExc_OverflowError, f, "argument '" + f.args[i] + "' does not fit in 64 bits");
    return false;
  }
  out[i] = v;
  return true;
}

PyObject* call(PyObject* self, PyObject* const* args, Py_ssize_t nargsf, PyObject* kwnames) {
  const auto* f = static_cast<const Function*>(PyCapsule_GetPointer(self, kCapsule));
  if (f == nullptr) return nullptr;
  const std::size_t n = f->args.size();
  const auto npos = static_cast<std::size_t>(PyVectorcall_NARGS(nargsf));
  if (npos > f->order.size()) {
    return fail(PyExc_TypeError, *f,
                "takes " + std::to_string(f->order.size()) + " arguments, got " +
                    std::to_string(npos));
  }
  int64_t v[kMaxArgs];
  bool given[kMaxArgs] = {};
  for (std::size_t j = 0; j < npos; ++j) {
    const std::size_t i = f->order[j];
    if (!read(*f, i, args[j], v)) return nullptr;
    given[i] = true;
  }
  const Py_ssize_t nkw = kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames);
  for (Py_ssize_t j = 0; j < nkw; ++j) {
    const char* key = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kwnames, j));
    if (key == nullptr) return nullptr;
    std::size_t i = 0;
    while (i < n && f->args[i] != key) ++i;
    if (i == n) return fail(PyExc_TypeError, *f, std::string("no argument named '") + key + "'");
    if (f->bound[i]) return fail(PyExc_TypeError, *f, "argument '" + f->args[i] + "' is bound");
    if (given[i]) return fail(PyExc_TypeError, *f, "argument '" + f->args[i] + "' given twice");
    if (!read(*f, i, args[npos + j], v)) return nullptr;
    given[i] = true;
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (given[i]) continue;
    if (!f->has_default[i]) return fail(PyExc_TypeError, *f, "missing '" + f->args[i] + "'");
    v[i] = f->defaults[i];
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
  } catch (const std::invalid_argument& e) {
    error = PyExc_ValueError, message = e.what();
  } catch (const std::domain_error& e) {
    error = PyExc_ValueError, message = e.what();
  } catch (const std::length_error& e) {
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
  f->def = {f->name.c_str(), reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&call)),
            METH_FASTCALL | METH_KEYWORDS, f->doc.c_str()};
  PyMethodDef* def = &f->def;
  py::object self =
      py::reinterpret_steal<py::object>(PyCapsule_New(f.get(), kCapsule, &free_function));
  if (!self) throw py::error_already_set();
  f.release();
  py::object fn = py::reinterpret_steal<py::object>(PyCFunction_NewEx(def, self.ptr(), module_name));
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
  auto f = std::make_unique<Function>(base);
  std::string names;
  for (const auto& [key, value] : bound) {
    const auto name = key.cast<std::string>();
    std::size_t i = 0;
    while (i < f->args.size() && f->args[i] != name) ++i;
    if (i == f->args.size() || f->bound[i]) {
      throw py::type_error("int_partial: " + f->name + "() has no unbound argument '" + name +
                           "'");
    }
    if (!read(*f, i, value.ptr(), f->defaults.data())) throw py::error_already_set();
    f->has_default[i] = f->bound[i] = true;
    names += (names.empty() ? "" : ", ") + name;
  }
  f->order.clear();
  for (std::size_t i = 0; i < f->args.size(); ++i) {
    if (!f->bound[i]) f->order.push_back(i);
  }
  f->doc = f->name + " with " + names + " bound; the other arguments in order.\n\n" + base.doc;
  return function_object(std::move(f), fn.attr("__module__").ptr());
}

}  // namespace

void add(py::module_& m, const char* name, const char* spec, const std::string& doc, Erased fn,
         Invoker invoker, int nparams) {
  auto f = std::make_unique<Function>();
  f->name = name;
  f->doc = parse_spec(*f, spec) + "\n\n" + doc;
  if (static_cast<int>(f->args.size()) != nparams) {
    throw std::logic_error(f->name + ": the spec names " + std::to_string(f->args.size()) +
                           " arguments, the function takes " + std::to_string(nparams));
  }
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
