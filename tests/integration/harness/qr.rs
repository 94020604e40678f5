//! Decoding the enrollment QR code from its PNG, as a phone camera would.

/// Decodes a grayscale or RGB(A) PNG and returns the text of its one QR code.
pub fn decode_png(png_bytes: &[u8]) -> String {
    let decoder = png::Decoder::new(png_bytes);
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buffer).unwrap();
    let channels = info.color_type.samples();
    let (width, height) = (info.width as usize, info.height as usize);
    let luma = |x: usize, y: usize| buffer[(y * width + x) * channels];
    // rqrr's finder-pattern search misses a code now and then at one
    // scale, so a second try samples every other pixel.
    for step in [1, 2, 3] {
        let mut image = rqrr::PreparedImage::prepare_from_greyscale(width / step, height / step, |x, y| luma(x * step, y * step));
        let decoded: Vec<String> = image.detect_grids().iter().filter_map(|grid| grid.decode().ok()).map(|(_, text)| text).collect();
        if let [text] = decoded.as_slice() {
            return text.clone();
        }
    }
    panic!("no single QR code found in the {width}x{height} image");
}

/// Returns the query parameter `name` of an otpauth URI, percent-decoded.
pub fn uri_param(uri: &str, name: &str) -> Option<String> {
    let url = url::Url::parse(uri).unwrap();
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}
