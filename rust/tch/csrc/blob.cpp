// at::from_blob with a release callback: the tensor (and every view of it)
// keeps the Rust owner of its bytes alive, and the owner is released when
// libtorch frees the storage. tch's own from_blob has no deleter.
#include <ATen/ops/from_blob.h>

#include <cstdlib>
#include <cstring>
#include <exception>

extern "C" {

typedef void (*crs4_release_fn)(void *);

// Returns a heap at::Tensor (what tch's Tensor wraps), or null with *error set
// (free it with crs4_free_error). `release(ctx)` runs exactly once in every case.
at::Tensor *crs4_tensor_of_blob(void *data, const int64_t *dims, size_t ndims,
                                int scalar_type, crs4_release_fn release,
                                void *ctx, char **error) {
  *error = nullptr;
  try {
    auto maker = at::for_blob(data, at::IntArrayRef(dims, ndims));
    maker.context(ctx, release);
    at::Tensor t = maker.options(at::TensorOptions()
                                     .dtype(static_cast<at::ScalarType>(scalar_type))
                                     .device(at::kCPU))
                       .make_tensor();
    return new at::Tensor(std::move(t));
  } catch (const std::exception &e) {
    *error = strdup(e.what());
  } catch (...) {
    *error = strdup("unknown C++ exception");
  }
  return nullptr;
}

void crs4_free_error(char *error) { free(error); }
}
