//! Release builds embed `web/dist` (the built web app); a change there must rebuild the crate,
//! which cargo does not notice by itself for files read by a macro.
fn main() {
    println!("cargo:rerun-if-changed=../../web/dist");
}
