//! Tokenization for the Qwen3 formats: plain encoding without the tokenizer's post-processor,
//! `<|endoftext|>` appended exactly once, and truncation that keeps the parts the model reads.

use std::path::Path;

use super::prompts::{self, EOS_TOKEN_ID};
use crate::error::{Error, Result};

/// What to do with inputs longer than the model's maximum length (`semflow.truncate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Drop tokens from the end of the text, keeping the trailing `<|endoftext|>` (embeddings)
    /// or the prompt's fixed suffix (reranker).
    #[default]
    End,
    /// Fail the query, naming the row.
    Error,
}

impl std::str::FromStr for Truncation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "end" => Ok(Truncation::End),
            "error" => Ok(Truncation::Error),
            other => Err(Error::InvalidArgument(format!(
                "semflow.truncate must be 'end' or 'error', got '{other}'"
            ))),
        }
    }
}

/// An input that did not fit: how many tokens it had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong(pub usize);

/// A Qwen3 tokenizer loaded from `tokenizer.json`.
pub struct QwenTokenizer {
    inner: tokenizers::Tokenizer,
    rerank_prefix: Vec<u32>,
    rerank_suffix: Vec<u32>,
}

impl std::fmt::Debug for QwenTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QwenTokenizer").finish_non_exhaustive()
    }
}

impl QwenTokenizer {
    /// Loads `tokenizer.json`; padding and truncation stored in the file are switched off
    /// because semflow applies its own.
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut tok = Self {
            inner,
            rerank_prefix: Vec::new(),
            rerank_suffix: Vec::new(),
        };
        tok.rerank_prefix = tok.encode(prompts::RERANK_PREFIX)?;
        tok.rerank_suffix = tok.encode(prompts::RERANK_SUFFIX)?;
        Ok(tok)
    }

    /// The underlying Hugging Face tokenizer (padding and truncation off).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text` with special tokens parsed but nothing added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Encodes many texts on the tokenizer's thread pool.
    pub fn encode_batch(&self, texts: Vec<String>) -> Result<Vec<Vec<u32>>> {
        self.inner
            .encode_batch(texts, false)
            .map(|es| es.into_iter().map(|e| e.get_ids().to_vec()).collect())
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Decodes ids back to text (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Checks that the tokenizer maps the tokens the recipe reads to the ids semflow uses:
    /// `<|endoftext|>` for every model, `yes`/`no` for rerankers. A checkpoint with another
    /// vocabulary would otherwise give vectors or scores of the wrong positions silently.
    pub fn check_special_tokens(&self, model: &str, reranker: bool) -> Result<()> {
        let mut expected = vec![("<|endoftext|>", EOS_TOKEN_ID)];
        if reranker {
            expected.extend([("yes", prompts::YES_TOKEN_ID), ("no", prompts::NO_TOKEN_ID)]);
        }
        for (token, id) in expected {
            let found = self.inner.token_to_id(token);
            if found != Some(id) {
                return Err(Error::model(
                    model,
                    format!(
                        "tokenizer.json maps {token:?} to {found:?}, but the Qwen3 recipe reads id {id}; this is not a Qwen3 tokenizer"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The reranker prompt's fixed token ids before and after the body.
    pub fn rerank_affixes(&self) -> (&[u32], &[u32]) {
        (&self.rerank_prefix, &self.rerank_suffix)
    }

    /// Finishes an embedding input: `<|endoftext|>` appended exactly once (an input whose text
    /// already ends with it is not given a second), then fitted to `max_len`.
    pub fn finish_embedding_ids(
        mut ids: Vec<u32>,
        max_len: usize,
        truncation: Truncation,
    ) -> std::result::Result<Vec<u32>, TooLong> {
        if ids.last() != Some(&EOS_TOKEN_ID) {
            ids.push(EOS_TOKEN_ID);
        }
        if ids.len() > max_len {
            if truncation == Truncation::Error {
                return Err(TooLong(ids.len()));
            }
            ids.truncate(max_len.saturating_sub(1));
            ids.push(EOS_TOKEN_ID);
        }
        Ok(ids)
    }

    /// Limits a raw scoring prompt (the caller's two texts, tokenized and joined, nothing
    /// added) to `max_len`: cut from the front, because the prompt's last position is where
    /// the answer is read.
    pub fn finish_raw_pair_ids(
        mut ids: Vec<u32>,
        max_len: usize,
        truncation: Truncation,
    ) -> std::result::Result<Vec<u32>, TooLong> {
        if ids.len() > max_len {
            if truncation == Truncation::Error {
                return Err(TooLong(ids.len()));
            }
            ids.drain(..ids.len() - max_len);
        }
        Ok(ids)
    }

    /// Builds the reranker's token ids from the tokenized prompt body (see
    /// [`prompts::rerank_body`]): prefix + body + suffix, the body cut to fit `max_len`
    /// as the Qwen3-Reranker reference code does.
    pub fn finish_rerank_ids(
        &self,
        body: Vec<u32>,
        max_len: usize,
        truncation: Truncation,
    ) -> std::result::Result<Vec<u32>, TooLong> {
        let fixed = self.rerank_prefix.len() + self.rerank_suffix.len();
        let total = fixed + body.len();
        let room = max_len.saturating_sub(fixed);
        if total > max_len && (truncation == Truncation::Error || room == 0) {
            return Err(TooLong(total));
        }
        let mut ids = Vec::with_capacity(total.min(max_len));
        ids.extend_from_slice(&self.rerank_prefix);
        ids.extend_from_slice(&body[..body.len().min(room)]);
        ids.extend_from_slice(&self.rerank_suffix);
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eos_appended_once_and_kept_on_truncation() {
        let f = QwenTokenizer::finish_embedding_ids;
        assert_eq!(
            f(vec![1, 2], 10, Truncation::End).unwrap(),
            vec![1, 2, EOS_TOKEN_ID]
        );
        assert_eq!(
            f(vec![1, EOS_TOKEN_ID], 10, Truncation::End).unwrap(),
            vec![1, EOS_TOKEN_ID]
        );
        assert_eq!(f(vec![], 10, Truncation::End).unwrap(), vec![EOS_TOKEN_ID]);
        assert_eq!(
            f(vec![1, 2, 3, 4], 3, Truncation::End).unwrap(),
            vec![1, 2, EOS_TOKEN_ID]
        );
        assert_eq!(f(vec![1, 2, 3, 4], 3, Truncation::Error), Err(TooLong(5)));
    }

    #[test]
    fn raw_pairs_keep_their_end() {
        let f = QwenTokenizer::finish_raw_pair_ids;
        assert_eq!(
            f(vec![1, 2, 3], 3, Truncation::Error).unwrap(),
            vec![1, 2, 3]
        );
        assert_eq!(
            f(vec![1, 2, 3, 4], 3, Truncation::End).unwrap(),
            vec![2, 3, 4]
        );
        assert_eq!(f(vec![1, 2, 3, 4], 3, Truncation::Error), Err(TooLong(4)));
    }

    #[test]
    fn truncation_setting_parses() {
        assert_eq!("END".parse::<Truncation>().unwrap(), Truncation::End);
        assert_eq!("error".parse::<Truncation>().unwrap(), Truncation::Error);
        let err = "middle".parse::<Truncation>().unwrap_err().to_string();
        assert!(err.contains("semflow.truncate"), "{err}");
    }
}
