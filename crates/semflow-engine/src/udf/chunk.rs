//! `chunk(text, max_tokens [, overlap_tokens [, mode]])`: splits a document into pieces sized
//! in the embedding model's own tokens, for `unnest` and then `embed()`.
//!
//! Returns a list of `{seq, text, start_char, end_char, tokens}`: `seq` from 0, the chunk's
//! text (whitespace at its edges trimmed), its position in the input in Unicode scalar values
//! (`[start_char, end_char)`, so `substr(text, start_char + 1, end_char - start_char)` gives it
//! back), and its length in tokens without the `<|endoftext|>` that `embed()` appends. Splits
//! prefer the largest semantic unit that fits (paragraphs, then sentences, words, graphemes;
//! in `'markdown'` mode headings, blocks and list items first) via the `text-splitter` crate.
//! No chunk exceeds `max_tokens`, which must leave room for the end token below the model's
//! limit, so `embed()` of a chunk never truncates.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, Int32Builder, Int64Builder, ListBuilder, StringBuilder, StructBuilder,
};
use arrow::datatypes::{DataType, Field, Fields, Int64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use text_splitter::{ChunkConfig, MarkdownSplitter, TextSplitter};
use tokenizers::Tokenizer;

use super::args::{expect_string, InferenceRef, StringArg};
use super::model_work;
use crate::error::arg_err;
use crate::inference::tokenize::QwenTokenizer;
use crate::inference::Inference;

/// Below this a single character (up to 4 byte-level tokens) could not always fit.
const MIN_MAX_TOKENS: i64 = 8;

/// How the text is structured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Text,
    Markdown,
}

impl Mode {
    fn parse(s: Option<&str>) -> Result<Self> {
        match s.map(|m| m.trim().to_ascii_lowercase()) {
            None => Ok(Mode::Text),
            Some(m) if m == "text" || m.is_empty() => Ok(Mode::Text),
            Some(m) if m == "markdown" || m == "md" => Ok(Mode::Markdown),
            Some(m) => arg_err!("chunk(): mode must be 'text' or 'markdown', got '{m}'"),
        }
    }
}

/// One piece of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub text: String,
    pub start_char: usize,
    pub end_char: usize,
    pub tokens: usize,
}

/// Splits `text` into chunks of at most `max_tokens` tokens of `tokenizer`, consecutive chunks
/// sharing up to `overlap` tokens.
pub fn split(
    tokenizer: &Tokenizer,
    text: &str,
    max_tokens: usize,
    overlap: usize,
    markdown: bool,
) -> std::result::Result<Vec<Chunk>, String> {
    let config = ChunkConfig::new(max_tokens)
        .with_sizer(tokenizer)
        .with_overlap(overlap)
        .map_err(|e| e.to_string())?;
    let pieces: Vec<(usize, &str)> = if markdown {
        MarkdownSplitter::new(config)
            .chunk_char_indices(text)
            .map(|c| (c.char_offset, c.chunk))
            .collect()
    } else {
        TextSplitter::new(config)
            .chunk_char_indices(text)
            .map(|c| (c.char_offset, c.chunk))
            .collect()
    };
    let mut out = Vec::with_capacity(pieces.len());
    for (start, piece) in pieces {
        let tokens = count(tokenizer, piece)?;
        if tokens <= max_tokens {
            out.push(Chunk {
                text: piece.to_string(),
                start_char: start,
                end_char: start + piece.chars().count(),
                tokens,
            });
        } else {
            // One grapheme longer than the budget (e.g. a letter with many combining marks):
            // the splitter returns it whole, so cut it between characters.
            split_by_chars(tokenizer, piece, start, max_tokens, &mut out)?;
        }
    }
    Ok(out)
}

fn count(tokenizer: &Tokenizer, s: &str) -> std::result::Result<usize, String> {
    tokenizer
        .encode_fast(s, false)
        .map(|e| e.get_ids().len())
        .map_err(|e| e.to_string())
}

/// Greedy longest prefixes (in characters) that fit, found by binary search.
fn split_by_chars(
    tokenizer: &Tokenizer,
    piece: &str,
    start: usize,
    max_tokens: usize,
    out: &mut Vec<Chunk>,
) -> std::result::Result<(), String> {
    let chars: Vec<(usize, char)> = piece.char_indices().collect();
    let byte_at = |i: usize| chars.get(i).map_or(piece.len(), |c| c.0);
    let mut from = 0;
    while from < chars.len() {
        let (mut lo, mut hi) = (from + 1, chars.len());
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if count(tokenizer, &piece[byte_at(from)..byte_at(mid)])? <= max_tokens {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let text = &piece[byte_at(from)..byte_at(lo)];
        out.push(Chunk {
            text: text.to_string(),
            start_char: start + from,
            end_char: start + lo,
            tokens: count(tokenizer, text)?,
        });
        from = lo;
    }
    Ok(())
}

fn chunk_fields() -> Fields {
    Fields::from(vec![
        Field::new("seq", DataType::Int32, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("start_char", DataType::Int64, false),
        Field::new("end_char", DataType::Int64, false),
        Field::new("tokens", DataType::Int32, false),
    ])
}

#[derive(Debug)]
pub struct ChunkUdf {
    inference: InferenceRef,
    signature: Signature,
}

impl PartialEq for ChunkUdf {
    fn eq(&self, other: &Self) -> bool {
        self.inference == other.inference
    }
}
impl Eq for ChunkUdf {}
impl std::hash::Hash for ChunkUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inference.hash(state);
    }
}

impl ChunkUdf {
    pub fn new(inference: Arc<Inference>) -> Self {
        Self {
            inference: super::args::ByPtr(inference),
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    /// The embedding model's tokenizer, shared with the model (the inference service owns
    /// it; the weights are not loaded for it), and its token limit.
    fn tokenizer(&self) -> Result<(Arc<QwenTokenizer>, usize)> {
        let inference = self.inference.0.clone();
        model_work(async move {
            let tokenizer = inference.embed_tokenizer().await?;
            let limit = inference.token_limit_of(inference.embed_model_dir().await?);
            Ok((tokenizer, limit))
        })
    }
}

/// An integer argument per row (constants not copied); NULL as `None`.
enum IntArg {
    Scalar(Option<i64>),
    Array(ArrayRef),
}

impl IntArg {
    fn new(value: &ColumnarValue) -> Result<Self> {
        Ok(match value {
            ColumnarValue::Scalar(s) => match s.cast_to(&DataType::Int64)? {
                ScalarValue::Int64(v) => IntArg::Scalar(v),
                _ => IntArg::Scalar(None),
            },
            ColumnarValue::Array(a) => IntArg::Array(arrow::compute::cast(a, &DataType::Int64)?),
        })
    }

    fn get(&self, row: usize) -> Option<i64> {
        match self {
            IntArg::Scalar(v) => *v,
            IntArg::Array(a) => {
                let a = a.as_primitive::<Int64Type>();
                (!arrow::array::Array::is_null(a, row)).then(|| a.value(row))
            }
        }
    }
}

impl ScalarUDFImpl for ChunkUdf {
    fn name(&self) -> &str {
        "chunk"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if !(2..=4).contains(&arg_types.len()) {
            return arg_err!(
                "chunk(text, max_tokens [, overlap_tokens [, mode]]) takes 2 to 4 arguments, got {}",
                arg_types.len()
            );
        }
        let mut out = vec![expect_string("chunk", 1, "text", &arg_types[0])?];
        for (i, name) in [(1, "max_tokens"), (2, "overlap_tokens")] {
            if let Some(t) = arg_types.get(i) {
                if !(t.is_integer() || t == &DataType::Null) {
                    return arg_err!(
                        "chunk(): argument {} ({name}) must be an integer, got {t}",
                        i + 1
                    );
                }
                out.push(DataType::Int64);
            }
        }
        if let Some(t) = arg_types.get(3) {
            out.push(expect_string("chunk", 4, "mode", t)?);
        }
        Ok(out)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(Arc::new(Field::new(
            "item",
            DataType::Struct(chunk_fields()),
            true,
        ))))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let text = StringArg::new(&args.args[0])?;
        let max = IntArg::new(&args.args[1])?;
        let overlap = args.args.get(2).map(IntArg::new).transpose()?;
        let mode = args.args.get(3).map(StringArg::new).transpose()?;
        let (tokenizer, limit) = self.tokenizer()?;
        let mut builder =
            ListBuilder::new(StructBuilder::from_fields(chunk_fields(), 0)).with_field(Arc::new(
                Field::new("item", DataType::Struct(chunk_fields()), true),
            ));
        for row in 0..rows {
            let (Some(text), Some(max)) = (text.get(row), max.get(row)) else {
                builder.append_null();
                continue;
            };
            // embed() appends one <|endoftext|>, which must fit too.
            let ceiling = limit.saturating_sub(1) as i64;
            if !(MIN_MAX_TOKENS..=ceiling).contains(&max) {
                return arg_err!(
                    "chunk(): max_tokens must be between {MIN_MAX_TOKENS} and {ceiling} (the model's limit of {limit} tokens less the end token), got {max} (row {row})"
                );
            }
            let overlap = overlap.as_ref().and_then(|o| o.get(row)).unwrap_or(0);
            if overlap < 0 || overlap >= max {
                return arg_err!(
                    "chunk(): overlap_tokens must be at least 0 and below max_tokens ({max}), got {overlap} (row {row})"
                );
            }
            let mode = Mode::parse(mode.as_ref().and_then(|m| m.get(row)))?;
            let chunks = split(
                tokenizer.inner(),
                text,
                max as usize,
                overlap as usize,
                mode == Mode::Markdown,
            )
            .map_err(|e| DataFusionError::Execution(format!("chunk(): {e} (row {row})")))?;
            let item = builder.values();
            for (seq, c) in chunks.iter().enumerate() {
                item.field_builder::<Int32Builder>(0)
                    .expect("field 0 is seq")
                    .append_value(seq as i32);
                item.field_builder::<StringBuilder>(1)
                    .expect("field 1 is text")
                    .append_value(&c.text);
                item.field_builder::<Int64Builder>(2)
                    .expect("field 2 is start_char")
                    .append_value(c.start_char as i64);
                item.field_builder::<Int64Builder>(3)
                    .expect("field 3 is end_char")
                    .append_value(c.end_char as i64);
                item.field_builder::<Int32Builder>(4)
                    .expect("field 4 is tokens")
                    .append_value(c.tokens as i32);
                item.append(true);
            }
            builder.append(true);
        }
        let array: ArrayRef = Arc::new(builder.finish());
        Ok(ColumnarValue::Array(array))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../semflow-inference/tokenizer/qwen3-embedding-tokenizer.json"
        );
        Tokenizer::from_file(path).unwrap()
    }

    fn check(text: &str, max: usize, overlap: usize, markdown: bool) -> Vec<Chunk> {
        let tok = tokenizer();
        let chunks = split(&tok, text, max, overlap, markdown).unwrap();
        let chars: Vec<char> = text.chars().collect();
        for c in &chunks {
            assert!(c.tokens <= max, "{c:?}");
            assert_eq!(c.tokens, tok.encode(c.text.as_str(), false).unwrap().len());
            let back: String = chars[c.start_char..c.end_char].iter().collect();
            assert_eq!(back, c.text, "offsets must point at the chunk");
        }
        chunks
    }

    #[test]
    fn chunks_fit_and_offsets_are_in_characters() {
        let text =
            "石墨烯是一种二维碳纳米材料。🦀 Rust and 🚀 rockets! 👩‍👩‍👧 Cafe\u{301} na\u{308}ive. "
                .repeat(20);
        let chunks = check(&text, 32, 0, false);
        assert!(chunks.len() > 5, "{}", chunks.len());
        // Consecutive chunks cover the text in order.
        for w in chunks.windows(2) {
            assert!(w[0].end_char <= w[1].start_char);
        }
        let overlapping = check(&text, 40, 20, false);
        assert!(overlapping
            .windows(2)
            .any(|w| w[1].start_char < w[0].end_char));
    }

    #[test]
    fn markdown_splits_at_headings() {
        let doc = "# Graphene\n\nGraphene is carbon.\n\n# Copper\n\nCopper conducts heat and electricity well.\n";
        let chunks = check(doc, 12, 0, true);
        assert!(
            chunks.iter().any(|c| c.text.starts_with("# Copper")),
            "{chunks:?}"
        );
    }

    #[test]
    fn one_overlong_grapheme_is_cut_between_characters() {
        let zalgo = format!("a{}", "\u{301}".repeat(200));
        let chunks = check(&zalgo, 8, 0, false);
        assert!(chunks.len() > 1);
        assert_eq!(chunks.last().unwrap().end_char, zalgo.chars().count());
    }
}
