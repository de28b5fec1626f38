// The demo chat page.
