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
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(width, height, luma);
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1, "expected one QR code in the image");
    let (_meta, content) = grids[0].decode().unwrap();
    content
}

/// Returns the query parameter `name` of an otpauth URI, percent-decoded.
pub fn uri_param(uri: &str, name: &str) -> Option<String> {
    let url = url::Url::parse(uri).unwrap();
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}
