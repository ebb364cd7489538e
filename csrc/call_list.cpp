// CallList: a recorded sequence of dispatcher op calls, replayed from C++ (see call_list.h).
#include "call_list.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/jit/python/pybind_utils.h>

#include <string>
#include <utility>
#include <vector>

namespace regnet_kernels {
namespace {

namespace py = pybind11;

class CallList {
 public:
  // One argument of a step: a register (the input is register 0, each step's outputs follow in
  // order) or a constant converted once, at recording, to the schema's type.
  struct Arg {
    int64_t reg = -1;
    c10::IValue constant;
  };
  struct Step {
    c10::OperatorHandle op;
    std::vector<Arg> args;
    int64_t num_outputs = 0;
    std::vector<int64_t> release;  // registers last read by this step: dropped after it
  };

  // args: one (register index, None) or (-1, value) pair per schema argument, in schema order.
  void add(const std::string& name, const std::string& overload, const py::list& args, std::vector<int64_t> release) {
    auto handle = c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), overload.c_str());
    const auto& schema = handle.schema();
    TORCH_CHECK(args.size() == schema.arguments().size(), "CallList.add: ", name, ".", overload, " takes ",
                schema.arguments().size(), " arguments, got ", args.size());
    Step step{handle, {}, static_cast<int64_t>(schema.returns().size()), std::move(release)};
    for (size_t i = 0; i < args.size(); ++i) {
      auto pair = args[i].cast<py::tuple>();
      Arg arg;
      arg.reg = pair[0].cast<int64_t>();
      if (arg.reg < 0) {
        // A Python number where the schema takes a Tensor (`t * 256` reaches a dispatch mode so)
        // becomes a 0-dim tensor, as the Python call's own conversion makes it.
        torch::jit::ToIValueAllowNumbersAsTensors numbers_as_tensors(true);
        arg.constant = torch::jit::toIValue(pair[1], schema.arguments()[i].type());
      } else {
        TORCH_CHECK(arg.reg < num_registers_, "CallList.add: register ", arg.reg, " is not defined yet (",
                    num_registers_, " so far)");
      }
      step.args.push_back(std::move(arg));
    }
    num_registers_ += step.num_outputs;  // a step may release its own unused outputs
    for (int64_t r : step.release) {
      TORCH_CHECK(r >= 0 && r < num_registers_, "CallList.add: cannot release register ", r);
    }
    steps_.push_back(std::move(step));
  }

  // The tensors whose contents the constants were derived from, with their versions now: run()
  // refuses (returns None) once one of them has been updated in place.
  void watch(const std::vector<at::Tensor>& sources) {
    sources_.clear();
    versions_.clear();
    for (const auto& t : sources) {
      if (t.is_inference()) continue;  // no version counter (only inference mode may update it)
      sources_.push_back(t);
      versions_.push_back(t._version());
    }
  }

  void set_output(int64_t reg) {
    TORCH_CHECK(reg >= 0 && reg < num_registers_, "CallList.set_output: register ", reg, " is not defined");
    output_ = reg;
  }

  bool current() const {
    for (size_t i = 0; i < sources_.size(); ++i) {
      if (sources_[i]._version() != versions_[i]) return false;
    }
    return true;
  }

  // The output register's tensor for input x, or None if a watched tensor changed.
  py::object run(const at::Tensor& x) const {
    TORCH_CHECK(output_ >= 0, "CallList.run: no output register set");
    if (!current()) return py::none();
    at::Tensor out;
    {
      py::gil_scoped_release no_gil;
      std::vector<c10::IValue> regs;
      regs.reserve(num_registers_);
      regs.emplace_back(x);
      torch::jit::Stack stack;
      for (const auto& step : steps_) {
        stack.clear();
        stack.reserve(step.args.size());
        for (const auto& arg : step.args) stack.push_back(arg.reg >= 0 ? regs[arg.reg] : arg.constant);
        step.op.callBoxed(stack);
        TORCH_CHECK(static_cast<int64_t>(stack.size()) == step.num_outputs, "CallList.run: ",
                    step.op.schema().name(), " returned ", stack.size(), " values, expected ", step.num_outputs);
        for (auto& value : stack) regs.push_back(std::move(value));
        for (int64_t r : step.release) regs[r] = c10::IValue();
      }
      out = regs[output_].toTensor();
    }
    return py::cast(out);
  }

  int64_t size() const { return static_cast<int64_t>(steps_.size()); }

 private:
  std::vector<Step> steps_;
  int64_t num_registers_ = 1;
  int64_t output_ = -1;
  std::vector<at::Tensor> sources_;
  std::vector<int64_t> versions_;
};

}  // namespace

void bind_call_list(pybind11::module& m) {
  py::class_<CallList>(m, "CallList",
                       "Dispatcher op calls recorded from a Python forward and replayed without Python "
                       "(regnet_kernels/replay.py)")
      .def(py::init<>())
      .def("add", &CallList::add, py::arg("name"), py::arg("overload"), py::arg("args"), py::arg("release"))
      .def("watch", &CallList::watch, py::arg("sources"))
      .def("set_output", &CallList::set_output, py::arg("register"))
      .def("current", &CallList::current)
      .def("run", &CallList::run, py::arg("x"))
      .def("__len__", &CallList::size);
}

}  // namespace regnet_kernels
