//! JPEG decoding with the decoder PIL uses (the only unsafe code of the image module): libjpeg-turbo's, as vendored and built from C by
//! `mozjpeg-sys` (mozjpeg changes only the encoder; no SIMD here, and libjpeg-turbo's SIMD paths
//! for the accurate IDCT, upsampling and colour conversion are bit-exact with its C paths).
//!
//! It is configured as Pillow's `JpegDecode.c` is for `Image.open(...).load()` (no `draft`):
//! `jpeg_color_space` left to libjpeg's guess (JFIF / Adobe markers), the output colour space
//! from the number of components as `JpegImagePlugin` picks its mode (1: `L` -> grayscale,
//! 3: `RGB` -> RGB, 4: `CMYK` -> CMYK, anything else is refused), the default accurate integer
//! IDCT (`JDCT_ISLOW`) and fancy upsampling, no scaling, no EXIF orientation. Arithmetic-coded
//! files decode, as with Pillow's libjpeg-turbo.
//!
//! libjpeg reports fatal errors through `error_exit`, which must not return; the default one
//! calls `exit()`. Here it unwinds instead (with `resume_unwind`, so no panic message is
//! printed) to a `catch_unwind` in [`decode`]; `mozjpeg-sys`'s `unwinding` feature compiles
//! the C code with `-fexceptions` and declares every callback `extern "C-unwind"`, which makes
//! unwinding through the C frames defined. This needs `panic = "unwind"` (the default; with
//! `panic = "abort"` a corrupt JPEG would abort the process). Warnings print nothing; running
//! out of data before the last row is an error (Pillow raises "image file is truncated"),
//! other warnings are ignored (Pillow's `output_message` is a no-op too).
use std::ffi::{c_char, c_int, c_ulong, CStr};
use std::panic::{self, AssertUnwindSafe};

use mozjpeg_sys as sys;

/// PIL's limit for `Image.open`: more than `2 * Image.MAX_IMAGE_PIXELS` pixels raises
/// `DecompressionBombError`.
const MAX_PIXELS: u64 = 2 * (1024 * 1024 * 1024 / 4 / 3);
/// libjpeg's `JMSG_LENGTH_MAX`: the buffer size `format_message` expects.
const JMSG_LENGTH_MAX: usize = 200;

/// The PIL mode of a decoded JPEG, i.e. what libjpeg was asked to output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// One byte per pixel (`JCS_GRAYSCALE`).
    L,
    /// Three bytes per pixel (`JCS_RGB`).
    Rgb,
    /// Four bytes per pixel (`JCS_CMYK`) as libjpeg writes them: Adobe-inverted.
    Cmyk,
}

/// Decoded samples, row-major, `Mode`-many bytes per pixel.
pub(crate) struct Decoded {
    pub width: u32,
    pub height: u32,
    pub mode: Mode,
    pub data: Vec<u8>,
}

/// Decodes a whole JPEG file held in memory. The error is libjpeg's message (or ours).
pub(crate) fn decode(data: &[u8]) -> Result<Decoded, String> {
    let dec = Decompressor::new();
    match panic::catch_unwind(AssertUnwindSafe(|| dec.run(data))) {
        Ok(result) => result,
        Err(payload) => match payload.downcast::<Failure>() {
            Ok(failure) => Err(failure.0),
            // A bug of ours, not libjpeg's report: let it continue as the panic it is.
            Err(other) => panic::resume_unwind(other),
        },
    }
    // `dec` is dropped here (or during the unwinding above): jpeg_destroy_decompress.
}

/// The payload unwound from libjpeg's callbacks to `decode`: the error message.
struct Failure(String);

/// libjpeg's error manager with our state after it. `repr(C)` with `base` first: libjpeg
/// hands the callbacks `cinfo->err`, a pointer to `base`, which is then also one to `Self`.
#[repr(C)]
struct ErrorMgr {
    base: sys::jpeg_error_mgr,
    /// Set once every scanline is out: running out of data after that (a missing EOI
    /// marker) is fine, as in Pillow, which stops reading when it has all rows.
    all_rows_read: bool,
}

/// Everything libjpeg points into, in one heap allocation that never moves.
#[repr(C)]
struct State {
    err: ErrorMgr,
    cinfo: sys::jpeg_decompress_struct,
}

/// Owns a `State` (from `Box::into_raw`); every access goes through this raw pointer so
/// that the pointers libjpeg keeps (`cinfo.common.err`) stay valid.
struct Decompressor(*mut State);

impl Decompressor {
    fn new() -> Decompressor {
        // SAFETY: both structs are plain C data (integers, raw pointers, `Option`s of
        // function pointers, C-like enums whose 0 is a valid variant), for which all-zero
        // is a valid value; `jpeg_std_error` and `jpeg_create_decompress` initialise them.
        let state = unsafe {
            State { err: ErrorMgr { base: std::mem::zeroed(), all_rows_read: false }, cinfo: std::mem::zeroed() }
        };
        Decompressor(Box::into_raw(Box::new(state)))
    }

    /// Sets up the error manager and decompresses; run under `catch_unwind`, since any
    /// libjpeg call may unwind out of `error_exit` / `emit_message`.
    fn run(&self, data: &[u8]) -> Result<Decoded, String> {
        let p = self.0;
        // SAFETY: `p` is the live, exclusively owned allocation from `new`; the error
        // manager is installed before any call that can report an error, and the callbacks
        // only reach it through `cinfo.common.err` (a different field than `cinfo`, so no
        // reference here aliases it). jpeg_mem_src keeps `data`'s pointer, which libjpeg
        // reads only inside the calls below; `decode` destroys the decompressor while
        // `data` is still borrowed. Each scanline call gets one row pointer with `row`
        // writable bytes, exactly one output row (`output_width * output_components`).
        unsafe {
            let err = &mut (*p).err.base;
            sys::jpeg_std_error(err);
            err.error_exit = Some(error_exit);
            err.emit_message = Some(emit_message);
            err.output_message = Some(output_message);
            (*p).cinfo.common.err = std::ptr::addr_of_mut!((*p).err.base);
            sys::jpeg_create_decompress(std::ptr::addr_of_mut!((*p).cinfo));
            let cinfo = &mut (*p).cinfo;
            sys::jpeg_mem_src(cinfo, data.as_ptr(), data.len() as c_ulong);
            sys::jpeg_read_header(cinfo, 1);
            let (mode, space, channels) = match cinfo.num_components {
                1 => (Mode::L, sys::J_COLOR_SPACE::JCS_GRAYSCALE, 1),
                3 => (Mode::Rgb, sys::J_COLOR_SPACE::JCS_RGB, 3),
                4 => (Mode::Cmyk, sys::J_COLOR_SPACE::JCS_CMYK, 4),
                n => return Err(format!("cannot handle {n}-component images (PIL takes 1, 3 or 4)")),
            };
            cinfo.out_color_space = space;
            // libjpeg's defaults, which Pillow keeps outside draft mode; restated.
            cinfo.dct_method = sys::J_DCT_METHOD::JDCT_ISLOW;
            cinfo.do_fancy_upsampling = 1;
            let pixels = cinfo.image_width as u64 * cinfo.image_height as u64;
            if pixels > MAX_PIXELS {
                return Err(format!(
                    "{}x{} is {pixels} pixels, over PIL's decompression-bomb limit of {MAX_PIXELS}",
                    cinfo.image_width, cinfo.image_height
                ));
            }
            sys::jpeg_start_decompress(cinfo);
            let (width, height) = (cinfo.output_width, cinfo.output_height);
            if cinfo.output_components != channels {
                return Err(format!("libjpeg produced {} components, not {channels}", cinfo.output_components));
            }
            let row = width as usize * channels as usize;
            let mut out = Vec::new();
            out.try_reserve_exact(row * height as usize)
                .map_err(|_| format!("cannot allocate {width}x{height}x{channels} bytes"))?;
            out.resize(row * height as usize, 0u8);
            while cinfo.output_scanline < height {
                let y = cinfo.output_scanline as usize;
                let mut dst = out[y * row..(y + 1) * row].as_mut_ptr();
                if sys::jpeg_read_scanlines(cinfo, &mut dst, 1) != 1 {
                    // Only a suspending data source returns 0 rows; jpeg_mem_src does not.
                    return Err("libjpeg returned no scanline".into());
                }
            }
            (*p).err.all_rows_read = true;
            sys::jpeg_finish_decompress(cinfo);
            Ok(Decoded { width, height, mode, data: out })
        }
    }
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: `self.0` came from `Box::into_raw` and is freed only here.
        // jpeg_destroy_decompress is valid in every state `run` can leave (also after an
        // error unwound out of libjpeg, and on the zeroed struct when creation never ran or
        // failed: it then only frees nothing), and reports no errors.
        unsafe {
            sys::jpeg_destroy_decompress(&mut (*self.0).cinfo);
            drop(Box::from_raw(self.0));
        }
    }
}

/// libjpeg's message for the current `msg_code` (`format_message`, e.g. "Premature end of
/// JPEG file").
///
/// # Safety
/// `cinfo` must be a libjpeg object whose error manager `jpeg_std_error` initialised.
unsafe fn message(cinfo: &mut sys::jpeg_common_struct) -> String {
    let mut buf = [0 as c_char; JMSG_LENGTH_MAX];
    // SAFETY: `cinfo.err` is set (caller). The binding types `format_message`'s buffer as
    // `&[u8; 80]`, but the C function is `void (*)(j_common_ptr, char *)` and writes up to
    // JMSG_LENGTH_MAX bytes, NUL included; calling it through the C signature with a buffer
    // of that size is sound (references and raw pointers are passed alike).
    unsafe {
        let Some(format) = (*cinfo.err).format_message else { return "unknown libjpeg error".into() };
        let format: unsafe extern "C-unwind" fn(*mut sys::jpeg_common_struct, *mut c_char) =
            std::mem::transmute(format);
        format(cinfo, buf.as_mut_ptr());
        buf[JMSG_LENGTH_MAX - 1] = 0;
        CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
    }
}

/// libjpeg's fatal-error callback: unwinds to `decode` with the message.
unsafe extern "C-unwind" fn error_exit(cinfo: &mut sys::jpeg_common_struct) {
    // SAFETY: libjpeg calls this with its object, whose error manager is ours.
    let msg = unsafe { message(cinfo) };
    panic::resume_unwind(Box::new(Failure(msg)))
}

/// libjpeg's warning / trace callback: silent; running out of data before the last row is
/// made an error (see the module notes).
unsafe extern "C-unwind" fn emit_message(cinfo: &mut sys::jpeg_common_struct, msg_level: c_int) {
    if msg_level >= 0 {
        return; // trace messages
    }
    // SAFETY: `cinfo.err` points to `ErrorMgr::base`, the first field of our `repr(C)`
    // `ErrorMgr` (set in `run`), so it is also a valid pointer to the whole `ErrorMgr`.
    let err = unsafe { &mut *cinfo.err.cast::<ErrorMgr>() };
    err.base.num_warnings += 1;
    if err.base.msg_code == sys::JWRN_JPEG_EOF as c_int && !err.all_rows_read {
        // SAFETY: as above.
        let msg = unsafe { message(cinfo) };
        panic::resume_unwind(Box::new(Failure(format!("{msg} (the file is truncated)"))))
    }
}

/// libjpeg's message printer (reached only through the default handlers replaced above):
/// prints nothing.
unsafe extern "C-unwind" fn output_message(_cinfo: &mut sys::jpeg_common_struct) {}
