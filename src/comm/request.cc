#include "request.h"

#include "dagr/error.h"

namespace dagr {

std::string_view name(OpKind k) {
  switch (k) {
    case OpKind::barrier: return "barrier";
    case OpKind::allreduce: return "allreduce";
    case OpKind::reduce: return "reduce";
    case OpKind::broadcast: return "broadcast";
    case OpKind::allgather: return "allgather";
    case OpKind::reduce_scatter: return "reduce_scatter";
    case OpKind::send: return "send";
    case OpKind::recv: return "recv";
  }
  return "?";
}

}  // namespace dagr

namespace dagr::detail {

Fingerprint Fingerprint::of(const Request& r) {
  Fingerprint f;
  f.kind = r.kind;
  if (r.kind == OpKind::barrier) return f;
  f.count = r.count;
  f.dtype = r.dtype;
  if (r.kind == OpKind::allreduce || r.kind == OpKind::reduce || r.kind == OpKind::reduce_scatter)
    f.op = r.op;
  if (r.kind == OpKind::reduce || r.kind == OpKind::broadcast) f.root = r.root;
  return f;
}

std::string Fingerprint::describe() const {
  if (kind == OpKind::barrier) return "barrier()";
  std::string s = concat(name(kind), "(");
  if (kind == OpKind::allreduce || kind == OpKind::reduce || kind == OpKind::reduce_scatter)
    s += concat(name(op), ", ");
  s += concat(name(dtype), ", count=", count);
  if (kind == OpKind::reduce || kind == OpKind::broadcast) s += concat(", root=", root);
  return s + ")";
}

}  // namespace dagr::detail
