//! Compiles the small C++ shim that gives tensors a release callback, against
//! the libtorch that torch-sys found (it exports its lib dir to dependents).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc/blob.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not report its libtorch lib directory"),
    );
    let root = lib.parent().expect("libtorch lib dir has a parent");
    // Pip wheels and current libtorch archives use the C++11 ABI.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .file("csrc/blob.cpp")
        .compile("crs4_tch_blob");
    // Tests and examples of this crate find libtorch without LD_LIBRARY_PATH.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
