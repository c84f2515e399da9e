-- table-description: one small JPEG per image version, made during the audit for the review report (the lake is not read again). Thumbnails may carry burned-in patient text from the image itself.
-- uri: object URL, as in images.
-- etag: object version, as in images.
-- width: thumbnail width in pixels.
-- height: thumbnail height in pixels.
-- jpeg: the thumbnail as stored (not corrected), 8-bit grayscale JPEG bytes, longest side at most 192 px.
create table if not exists thumbnails (
    uri varchar not null,
    etag varchar not null,
    width integer,
    height integer,
    jpeg blob
);
