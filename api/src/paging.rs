//! The platform's `pagenum`/`pagesize` paging, read in one place: both are checked, and the
//! offset they make is computed without overflow (a `pagenum` near `i64::MAX` is a 400,
//! not a panic or a negative OFFSET sent to the database).

use crate::ApiError;

/// The largest `pagesize` any route accepts.
pub(crate) const MAX_PAGE_SIZE: i64 = 1000;

/// Where a page starts and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Page {
    pub offset: i64,
    pub size: i64,
}

impl Page {
    /// Page `pagenum` (from 1, default 1) of `pagesize` (1 to 1000, default `default_size`).
    pub(crate) fn new(pagenum: Option<i64>, pagesize: Option<i64>, default_size: i64) -> Result<Page, ApiError> {
        let (num, size) = (pagenum.unwrap_or(1), pagesize.unwrap_or(default_size));
        if num < 1 || !(1..=MAX_PAGE_SIZE).contains(&size) {
            return Err(ApiError::BadRequest(format!(
                "need pagenum >= 1 and pagesize from 1 to {MAX_PAGE_SIZE}"
            )));
        }
        let offset = (num - 1)
            .checked_mul(size)
            .ok_or_else(|| ApiError::BadRequest(format!("pagenum {num} is past any page")))?;
        Ok(Page { offset, size })
    }

    /// This page of `items`.
    pub(crate) fn of<T>(self, items: impl IntoIterator<Item = T>) -> Vec<T> {
        let skip = usize::try_from(self.offset).unwrap_or(usize::MAX);
        items.into_iter().skip(skip).take(self.size as usize).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_checked_and_never_overflow() {
        assert_eq!(Page::new(None, None, 10).unwrap(), Page { offset: 0, size: 10 });
        assert_eq!(Page::new(Some(3), Some(20), 10).unwrap(), Page { offset: 40, size: 20 });
        assert!(Page::new(Some(0), None, 10).is_err());
        assert!(Page::new(Some(1), Some(1001), 10).is_err());
        assert!(Page::new(Some(i64::MAX), Some(1000), 10).is_err());
        assert_eq!(
            Page::new(Some(i64::MAX / 1000), Some(1000), 10).unwrap().of(0..5),
            Vec::<i32>::new()
        );
        assert_eq!(Page::new(Some(2), Some(2), 10).unwrap().of(0..5), vec![2, 3]);
    }
}
