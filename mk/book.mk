# The book (issue 4): `make book` executes every chapter and builds the static site in build/book/html.
# It needs the offline assets in build/book/vendor first (MathJax and the ipywidgets HTML manager, from the
# npm registry by exact version), so that no page loads anything from a CDN.
APT_PACKAGES += chromium
APT_COMMANDS += npm:npm
MAIN_JOBS    += book

BOOK_VENDOR := build/book/vendor/.fetched

.PHONY: book book-vendor book-check book-clean

## book: execute every chapter and build the offline HTML book in build/book/html (cached rebuilds are quick)
book: setup $(BOOK_VENDOR)
	$(PY) book/build.py

## book-vendor: fetch MathJax and the widget manager JS into build/book/vendor (served locally, never a CDN)
book-vendor: $(BOOK_VENDOR)

$(BOOK_VENDOR): book/vendor.sh
	bash book/vendor.sh build/book/vendor
	@touch $@

# It checks maths, images, widgets and their static fallbacks, animations and their frames, then reloads each
# page with JavaScript off to see that the fallbacks and GIF animations still show.
## book-check: open every built page in headless Chromium, offline; screenshots in build/book/screenshots
book-check: book
	$(PY) book/browser_check.py build/book/html --shots build/book/screenshots

## book-clean: remove the built book and its execution cache
book-clean:
	rm -rf build/book
